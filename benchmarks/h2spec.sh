#!/bin/sh
# h2spec (summerwind/h2spec, the HTTP/2 server conformance suite) against a
# twistd cmux on 127.0.0.1, for each route shape txcmux serves HTTP/2 through:
#
#   grpc-web-h2c   routes grpc, then web; h2c (prior knowledge)
#   tls-grpc-web   a tls route whose inner routes are grpc, then web; h2 (ALPN)
#   tls-web        a tls route with web alone behind it; h2 (ALPN)
#   web-per-stream a web route with grpc_backend = "in-process"; h2c
#
# Not run in CI (h2spec cannot be fetched there).  Needs Go and Debian's
# golang-golang-x-net-dev, golang-github-spf13-cobra-dev and
# golang-github-fatih-color-dev, the h2spec source (H2SPEC_SRC, a checkout
# of github.com/summerwind/h2spec) or a built binary (H2SPEC), openssl, and
# PYTHON (default: python3) with txcmux importable.  Results (JUnit XML and
# h2spec's text output, one pair per shape) go to OUT (default: a fresh
# temporary directory); the last line per shape is h2spec's count.
#
#   H2SPEC_SRC=~/src/h2spec sh benchmarks/h2spec.sh
#   H2SPEC=/usr/local/bin/h2spec SHAPES="tls-web" sh benchmarks/h2spec.sh
set -eu

PYTHON=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
SHAPES=${SHAPES:-"grpc-web-h2c tls-grpc-web tls-web web-per-stream"}
H2SPEC_TIMEOUT=${H2SPEC_TIMEOUT:-2}
mkdir -p "$OUT"

if [ -z "${H2SPEC:-}" ]; then
    : "${H2SPEC_SRC:?set H2SPEC (a built h2spec) or H2SPEC_SRC (its source)}"
    gopath="$OUT/gopath"
    mkdir -p "$gopath/src/github.com/summerwind"
    ln -sfn "$(cd "$H2SPEC_SRC" && pwd)" "$gopath/src/github.com/summerwind/h2spec"
    (cd "$gopath/src/github.com/summerwind/h2spec" &&
        GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" \
            GOCACHE="$OUT/gocache" go build -o "$OUT/h2spec" ./cmd/h2spec)
    H2SPEC="$OUT/h2spec"
fi

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$OUT/server.key" -out "$OUT/server.pem" 2>/dev/null

config() {
    shape=$1
    echo 'listen = ["tcp:0:interface=127.0.0.1"]'
    case $shape in
    grpc-web-h2c)
        cat <<'TOML'
[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
TOML
        ;;
    tls-grpc-web | tls-web)
        inner='["grpc", "web"]'
        [ "$shape" = tls-web ] && inner='["web"]'
        cat <<TOML
routes = ["tls"]

[[route]]
name = "tls"
match = ["tls"]
tls = { certificate = "server.pem", key = "server.key", routes = $inner }

[[route]]
name = "grpc"
match = ["grpc"]
grpc = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
TOML
        ;;
    web-per-stream)
        cat <<'TOML'
[grpc_server]
services = ["txcmux.demo:add_services"]

[[route]]
name = "web"
match = ["http1", "http2"]
web = "txcmux.demo:resource"
grpc_backend = "in-process"
TOML
        ;;
    esac
}

status=0
for shape in $SHAPES; do
    config "$shape" >"$OUT/$shape.toml"
    rm -f "$OUT/$shape.port"
    "$PYTHON" -c "from twisted.scripts.twistd import run; run()" \
        -n --pidfile= --logfile="$OUT/$shape.log" \
        cmux --config "$OUT/$shape.toml" --port-file "$OUT/$shape.port" &
    server=$!
    tries=0
    while [ ! -s "$OUT/$shape.port" ]; do
        tries=$((tries + 1))
        if [ $tries -gt 300 ] || ! kill -0 $server 2>/dev/null; then
            echo "$shape: the server did not start; see $OUT/$shape.log" >&2
            kill $server 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
    port=$(head -n1 "$OUT/$shape.port")
    tls=
    case $shape in tls-*) tls="-t -k" ;; esac
    # shellcheck disable=SC2086
    "$H2SPEC" -h 127.0.0.1 -p "$port" $tls -o "$H2SPEC_TIMEOUT" \
        -j "$OUT/$shape.xml" >"$OUT/$shape.txt" 2>&1 || status=1
    kill $server
    wait $server 2>/dev/null || true
    printf '%s: ' "$shape"
    tail -n1 "$OUT/$shape.txt"
done
echo "results in $OUT"
exit $status
