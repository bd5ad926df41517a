"""A gRPC client for the tutorial: calls /tutorial.Greeter/Greet once.

python client.py 127.0.0.1:8080                    # plaintext (h2c)
python client.py 127.0.0.1:8080 --tls server.pem   # TLS, trusting server.pem
"""

import sys

import grpc
from hello import METHOD

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8080"
if sys.argv[2:3] == ["--tls"]:
    with open(sys.argv[3], "rb") as trusted:
        credentials = grpc.ssl_channel_credentials(root_certificates=trusted.read())
    channel = grpc.secure_channel(target, credentials)
else:
    channel = grpc.insecure_channel(target)
with channel:
    print(channel.unary_unary(METHOD)(b"tutorial", timeout=10).decode())
