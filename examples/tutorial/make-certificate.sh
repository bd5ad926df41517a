#!/bin/sh
# A self-signed certificate for localhost and 127.0.0.1, valid for 30 days:
# server.pem (the certificate, which clients are told to trust) and
# server.key (its private key, unencrypted).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout server.key -out server.pem
