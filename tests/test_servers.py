"""The storage servers the cloud tests use start, serve and stop (a broken install fails here first)."""

import urllib.request

from tests.servers import azurite_server, http_file_server, moto_server


def test_http_file_server_serves_ranges(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100_000)
    with http_file_server(tmp_path) as server:
        with urllib.request.urlopen(server.url + "/a.bin") as reply:
            assert len(reply.read()) == 100_000
            assert reply.headers["ETag"]
        ranged = urllib.request.Request(server.url + "/a.bin", headers={"Range": "bytes=99990-"})
        with urllib.request.urlopen(ranged) as reply:
            assert reply.status == 206
            assert len(reply.read()) == 10


def test_azurite_stores_and_returns_a_blob():
    from azure.storage.blob import BlobServiceClient

    with azurite_server() as server:
        client = BlobServiceClient.from_connection_string(server.env["AZURE_STORAGE_CONNECTION_STRING"])
        client.create_container("data").upload_blob("x.txt", b"hello")
        assert client.get_container_client("data").download_blob("x.txt").readall() == b"hello"


def test_moto_server_stores_and_returns_an_object():
    import boto3

    with moto_server() as server:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="bucket")
        s3.put_object(Bucket="bucket", Key="k.txt", Body=b"hi")
        assert s3.get_object(Bucket="bucket", Key="k.txt")["Body"].read() == b"hi"
