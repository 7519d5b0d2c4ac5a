/* pgoutput TupleData as one line of COPY text format, in C: the one step of PostgreSQL → PostgreSQL capture
 * that runs once per column of every change. Same contract as the pure Python tuple_line in copytext.py
 * (which stays the reference and the fallback): returns (line, values), with line None when the tuple
 * cannot be written whole ('u' unchanged TOAST, 'b' binary: values then holds the columns before it);
 * raises ValueError on a truncated or malformed tuple. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static inline Py_ssize_t read_i32(const unsigned char *p)
{
    return (Py_ssize_t)(int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

static inline int special(unsigned char c)
{
    return c == '\\' || c == '\t' || c == '\n' || c == '\r';
}

static PyObject *build(const unsigned char *data, Py_ssize_t size, Py_ssize_t pos)
{
    if (pos < 0 || pos + 2 > size) {
        PyErr_SetString(PyExc_ValueError, "TupleData runs past the end of the message");
        return NULL;
    }
    Py_ssize_t count = ((Py_ssize_t)data[pos] << 8) | data[pos + 1];
    pos += 2;
    const Py_ssize_t first = pos;
    Py_ssize_t length = count > 0 ? count - 1 : 0; /* the tabs between fields */
    PyObject *values = PyList_New(count);
    if (values == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (pos >= size) {
            PyErr_SetString(PyExc_ValueError, "TupleData runs past the end of the message");
            goto fail;
        }
        unsigned char kind = data[pos];
        if (kind == 't') {
            if (pos + 5 > size) {
                PyErr_SetString(PyExc_ValueError, "TupleData runs past the end of the message");
                goto fail;
            }
            Py_ssize_t n = read_i32(data + pos + 1);
            if (n < 0 || n > size - pos - 5) {
                PyErr_Format(PyExc_ValueError, "column %zd has length %zd, past the end of the message", i, n);
                goto fail;
            }
            const unsigned char *text = data + pos + 5;
            PyObject *value = PyBytes_FromStringAndSize((const char *)text, n);
            if (value == NULL)
                goto fail;
            PyList_SET_ITEM(values, i, value);
            length += n;
            for (Py_ssize_t j = 0; j < n; j++)
                length += special(text[j]);
            pos += 5 + n;
        }
        else if (kind == 'n') {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(values, i, Py_None);
            length += 2; /* \N */
            pos += 1;
        }
        else if (kind == 'u' || kind == 'b') {
            PyObject *before = PyList_GetSlice(values, 0, i);
            Py_DECREF(values);
            if (before == NULL)
                return NULL;
            PyObject *result = PyTuple_Pack(2, Py_None, before);
            Py_DECREF(before);
            return result;
        }
        else {
            PyErr_Format(PyExc_ValueError, "unknown TupleData column kind '%c'", kind);
            goto fail;
        }
    }

    PyObject *line = PyBytes_FromStringAndSize(NULL, length);
    if (line == NULL)
        goto fail;
    char *out = PyBytes_AS_STRING(line);
    pos = first;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0)
            *out++ = '\t';
        if (data[pos] == 'n') {
            *out++ = '\\';
            *out++ = 'N';
            pos += 1;
            continue;
        }
        Py_ssize_t n = read_i32(data + pos + 1);
        const unsigned char *text = data + pos + 5;
        for (Py_ssize_t j = 0; j < n; j++) {
            unsigned char c = text[j];
            if (special(c)) {
                *out++ = '\\';
                *out++ = c == '\\' ? '\\' : c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
            }
            else {
                *out++ = (char)c;
            }
        }
        pos += 5 + n;
    }
    PyObject *result = PyTuple_Pack(2, line, values);
    Py_DECREF(line);
    Py_DECREF(values);
    return result;

fail:
    Py_DECREF(values);
    return NULL;
}

static PyObject *tuple_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "tuple_line(data, pos) takes two arguments");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = build((const unsigned char *)view.buf, view.len, pos);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"tuple_line", (PyCFunction)(void (*)(void))tuple_line, METH_FASTCALL,
     "tuple_line(data, pos) -> (line or None, values): pgoutput TupleData at pos as one COPY text line."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_copytext", NULL, -1, methods};

PyMODINIT_FUNC PyInit__copytext(void)
{
    return PyModule_Create(&module);
}
