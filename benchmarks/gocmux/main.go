// Command gocmux is the Go reference for the txcmux benchmarks: the same
// small HTTP/1.1 service and byte relay, either through soheilhy/cmux on
// one port or each on its own port, written as a cmux user would write it.
//
//	gocmux -mode cmux -relay-backend 40123   # HTTP/1.1 + relay (SSH-) on one port
//	gocmux -mode http                        # the HTTP/1.1 server alone
//	gocmux -mode relay -relay-backend 40123  # the relay alone
//
// It listens on 127.0.0.1, port 0, prints one JSON line with its "port"
// and "pid", and serves until its stdin ends, like benchmarks/server.py.
// Built by benchmarks/run.py in GOPATH mode (GO111MODULE=off) against
// Debian's golang-github-soheilhy-cmux-dev.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/soheilhy/cmux"
)

// body is the response of every request: the same 13 bytes as the
// benchmark Site's.
var body = []byte("hello, world\n")

func hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write(body)
}

// closeWriter is a connection whose write side can be shut down alone.
type closeWriter interface {
	CloseWrite() error
}

// halfClose shuts down the write side of c (or of the connection a
// cmux.MuxConn wraps), so that a half-close passes through the relay.
func halfClose(c net.Conn) {
	if m, ok := c.(*cmux.MuxConn); ok {
		c = m.Conn
	}
	if w, ok := c.(closeWriter); ok {
		w.CloseWrite()
	} else {
		c.Close()
	}
}

// relay copies both ways between a client and a new connection to backend,
// passing each side's end of stream on as a half-close.
func relay(client net.Conn, backend string) {
	defer client.Close()
	server, err := net.Dial("tcp", backend)
	if err != nil {
		log.Printf("relay: %v", err)
		return
	}
	defer server.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(client, server)
		halfClose(client)
		close(done)
	}()
	io.Copy(server, client)
	halfClose(server)
	<-done
}

func serveRelay(l net.Listener, backend string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go relay(c, backend)
	}
}

func main() {
	mode := flag.String("mode", "cmux", "cmux, http or relay")
	port := flag.Int("relay-backend", 9, "the relay's backend port on 127.0.0.1")
	flag.Parse()
	backend := net.JoinHostPort("127.0.0.1", strconv.Itoa(*port))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", hello)
	switch *mode {
	case "cmux":
		m := cmux.New(l)
		sshL := m.Match(cmux.PrefixMatcher("SSH-"))
		httpL := m.Match(cmux.HTTP1Fast())
		go http.Serve(httpL, mux)
		go serveRelay(sshL, backend)
		go m.Serve()
	case "http":
		go http.Serve(l, mux)
	case "relay":
		go serveRelay(l, backend)
	default:
		log.Fatalf("unknown mode %q", *mode)
	}
	announce, _ := json.Marshal(map[string]int{
		"port": l.Addr().(*net.TCPAddr).Port,
		"pid":  os.Getpid(),
	})
	os.Stdout.Write(append(announce, '\n'))
	io.Copy(io.Discard, os.Stdin) // serve until stdin ends
	l.Close()
}
