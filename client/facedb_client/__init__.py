"""facedb's Python client: ``Client`` and ``AsyncClient`` over httpx, one method per endpoint.

>>> from facedb_client import Client
>>> with Client("http://127.0.0.1:8000", key=open("facedb_data/admin.key").read().strip()) as c:
...     person = c.create_identity("default", "emp-0042", display_name="Ada Lovelace")
...     c.enroll("default", person["id"], ["ada1.jpg", "ada2.jpg"])
...     c.identify("default", "door.jpg")["match"]
"""

from facedb_client._client import AsyncClient, Client, FacedbError
from facedb_client._requests import ImageInput

__all__ = ["AsyncClient", "Client", "FacedbError", "ImageInput"]
__version__ = "0.1.0"
