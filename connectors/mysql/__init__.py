"""MySQL and MariaDB connector (pymysql): trigger capture, full loads and apply."""

from .connector import MariadbConnector, MysqlConnector

__all__ = ["MariadbConnector", "MysqlConnector"]
