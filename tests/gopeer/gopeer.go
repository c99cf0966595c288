// gopeer - a Go libchan peer for the C project's interop tests (see README.md).
//
//	gopeer serve URL --echo|--count [--once]
//	gopeer dial URL --request-echo | --oneway N
//	gopeer relay LISTEN_URL TARGET_URL C2S_FILE S2C_FILE
//	gopeer dump FILE
//
// URL is unix:///path or tcp://host:port. stdout carries the lines a test parses
// (LISTENING, COUNT, REPLY, RET EOF, STREAM, ERROR); stderr carries one line per event.
package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/spdystream/spdy"
	"github.com/ugorji/go/codec"
)

const dialTimeout = 10 * time.Second // whole --request-echo / --oneway run
const closeGrace = 2 * time.Second   // waiting for the peer's half-closes at the end

var outMu sync.Mutex

func out(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gopeer: "+format+"\n", args...)
}

func fail(format string, args ...interface{}) {
	logf(format, args...)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: gopeer serve URL --echo|--count [--once]
       gopeer dial URL --request-echo | --oneway N
       gopeer relay LISTEN_URL TARGET_URL C2S_FILE S2C_FILE
       gopeer dump FILE
URL: unix:///path or tcp://host:port (port 0 picks one; see the LISTENING line)`)
	os.Exit(2)
}

func splitURL(u string) (network, addr string) {
	switch {
	case strings.HasPrefix(u, "unix://"):
		return "unix", strings.TrimPrefix(u, "unix://")
	case strings.HasPrefix(u, "tcp://"):
		return "tcp", strings.TrimPrefix(u, "tcp://")
	}
	fail("bad URL %q (want unix:///path or tcp://host:port)", u)
	return
}

func listen(u string) net.Listener {
	network, addr := splitURL(u)
	if network == "unix" {
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr) // a stale socket from an earlier run
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		fail("listen %s: %v", u, err)
	}
	out("LISTENING %s://%s", network, l.Addr().String())
	return l
}

func dial(u string) net.Conn {
	network, addr := splitURL(u)
	nc, err := net.DialTimeout(network, addr, dialTimeout)
	if err != nil {
		fail("dial %s: %v", u, err)
	}
	return nc
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		if len(args) >= 2 && isStressServe(args[1]) {
			stressServe(args)
			return
		}
		if len(args) < 2 || (args[1] != "--echo" && args[1] != "--count") ||
			(len(args) == 3 && args[2] != "--once") || len(args) > 3 {
			usage()
		}
		serve(args[0], args[1] == "--echo", len(args) == 3)
	case "dial":
		if len(args) >= 2 && isStressDial(args[1]) {
			stressDial(args)
			return
		}
		var err error
		done := make(chan struct{})
		switch {
		case len(args) == 2 && args[1] == "--request-echo":
			go func() { err = requestEcho(args[0]); close(done) }()
		case len(args) == 3 && args[1] == "--oneway":
			n, perr := strconv.Atoi(args[2])
			if perr != nil || n < 0 {
				usage()
			}
			go func() { err = oneway(args[0], n); close(done) }()
		default:
			usage()
		}
		select {
		case <-done:
		case <-time.After(dialTimeout):
			err = fmt.Errorf("timeout after %v", dialTimeout)
		}
		if err != nil {
			out("ERROR %v", err)
			fail("%v", err)
		}
	case "relay":
		if len(args) != 4 {
			usage()
		}
		relay(args[0], args[1], args[2], args[3])
	case "dump":
		if err := dump(args[0]); err != nil {
			fail("dump %s: %v", args[0], err)
		}
	default:
		usage()
	}
}

// ---- serve ----

func serve(u string, echo, once bool) {
	l := listen(u)
	for {
		nc, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		if once {
			serveConn(nc, echo)
			return
		}
		go serveConn(nc, echo)
	}
}

// serveConn handles every channel the peer opens until the peer closes the connection.
func serveConn(nc net.Conn, echo bool) {
	logf("connection from %v", nc.RemoteAddr())
	s, err := newSession(nc, true, logf)
	if err != nil {
		fail("%v", err)
	}
	var wg sync.WaitGroup
	for {
		r, err := s.accept()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if echo {
				echoChannel(r, &wg)
			} else {
				countChannel(r)
			}
		}()
	}
	wg.Wait()
	nc.Close()
	logf("connection from %v closed", nc.RemoteAddr())
}

func countChannel(r Receiver) {
	n := 0
	for {
		msg, err := r.ReceiveAny()
		if err == io.EOF {
			logf("channel %d: end of channel after %d messages", r.ref, n)
			out("COUNT %d", n)
			return
		}
		if err != nil {
			logf("channel %d: %v", r.ref, err)
			out("ERROR channel %d: %v", r.ref, err)
			return
		}
		n++
		// only the first: a line per message made this peer the bottleneck of
		// c_close_races_senders (177000 lines, 10 s past its round's timeout
		// under ASan), which only waits for the first
		if n == 1 {
			logf("channel %d: message %s", r.ref, clip(format(msg)))
		}
	}
}

// echoChannel: for each map message, reply on its "Ret" Sender with every field that is
// not an attachment (Value renamed Echo, as in the go-echo vector's Resp), then close Ret;
// echo a duplex byte stream's bytes until EOF, then close its write side; pass every
// message of an attached Receiver on to Ret.
func echoChannel(r Receiver, wg *sync.WaitGroup) {
	for {
		msg, err := r.ReceiveAny()
		if err == io.EOF {
			logf("channel %d: end of channel", r.ref)
			return
		}
		if err != nil {
			logf("channel %d: %v", r.ref, err)
			out("ERROR channel %d: %v", r.ref, err)
			return
		}
		logf("channel %d: message %s", r.ref, clip(format(msg)))
		m, ok := msg.(kvs)
		if !ok {
			continue
		}
		var ret *Sender
		var recvs []Receiver
		reply := kvs{}
		for i := 0; i+1 < len(m); i += 2 {
			k, v := m[i], m[i+1]
			switch a := v.(type) {
			case Sender:
				if k == "Ret" && ret == nil {
					ret = &a
				} else {
					logf("channel %d: Sender under %s not used", r.ref, format(k))
				}
			case ByteStream:
				wg.Add(1)
				go func() { defer wg.Done(); echoBytes(a) }()
			case Receiver:
				recvs = append(recvs, a)
			case OutStream: // we would write to it: nothing to say, EOF at once
				a.Close()
			case InStream: // we read from it
				wg.Add(1)
				go func() {
					defer wg.Done()
					n, err := io.Copy(io.Discard, a)
					logf("stream ref %d: read %d bytes (%v)", a.ref, n, err)
				}()
			default:
				if k == "Value" {
					k = "Echo"
				}
				reply = append(reply, k, v)
			}
		}
		if ret == nil {
			for _, rc := range recvs {
				wg.Add(1)
				go func(rc Receiver) { defer wg.Done(); pump(rc, nil) }(rc)
			}
			continue
		}
		if err := ret.Send(reply); err != nil {
			logf("reply on ref %d: %v", ret.ref, err)
			continue
		}
		logf("channel %d: replied on ref %d: %s", r.ref, ret.ref, clip(format(reply)))
		if len(recvs) == 0 {
			ret.Close()
			continue
		}
		wg.Add(1)
		go func(ret *Sender) {
			defer wg.Done()
			for _, rc := range recvs {
				pump(rc, ret)
			}
			ret.Close()
		}(ret)
	}
}

// pump reads a Receiver to its end, passing each message on to ret when there is one.
func pump(rc Receiver, ret *Sender) {
	for {
		msg, err := rc.ReceiveAny()
		if err != nil {
			logf("receiver ref %d: %v", rc.ref, err)
			return
		}
		logf("receiver ref %d: message %s", rc.ref, clip(format(msg)))
		if ret != nil {
			if err := ret.Send(msg); err != nil {
				logf("passing on to ref %d: %v", ret.ref, err)
			}
		}
	}
}

func echoBytes(b ByteStream) {
	buf := make([]byte, 32*1024)
	total := 0
	for {
		n, err := b.Read(buf)
		if n > 0 {
			total += n
			if _, werr := b.Write(buf[:n]); werr != nil {
				logf("stream ref %d: write: %v", b.ref, werr)
				return
			}
		}
		if err != nil {
			break
		}
	}
	logf("stream ref %d: echoed %d bytes, closing", b.ref, total)
	b.Close()
}

// ---- dial ----

// echoRequest is the go-echo vector's request; a struct encodes as a map in field order.
type echoRequest struct {
	Value  int
	Data   string
	Ret    Sender
	Stream ByteStream
}

func requestEcho(u string) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	ret, stream := s.newEndpoint(), s.newEndpoint()
	req := echoRequest{Value: 42, Data: "hello", Ret: Sender{endpoint: ret}, Stream: ByteStream{endpoint: stream}}
	if err := ch.Send(&req); err != nil {
		return fmt.Errorf("send: %v", err)
	}
	const payload = "stream-bytes"
	if _, err := stream.Write([]byte(payload)); err != nil {
		return fmt.Errorf("stream write: %v", err)
	}
	ch.Close()
	stream.Close()
	reply, err := ret.ReceiveAny()
	if err != nil {
		return fmt.Errorf("no reply on Ret: %v", err)
	}
	out("REPLY %s", format(reply))
	// the server closed Ret after its reply (with a FIN of its own, or on
	// the reply's DATA frame): Ret ends. Peeked, not received: receive
	// answers the end with our own FIN, which docker/libchan's client does
	// not send (the crosscheck compares our frames with its vector).
	if _, err := ret.rd.Peek(1); err != io.EOF {
		return fmt.Errorf("Ret after the reply: %v (want EOF)", err)
	}
	out("RET EOF")
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(stream, got); err != nil {
		return fmt.Errorf("echoed stream: got %q: %v", got, err)
	}
	out("STREAM %s", got)
	if string(got) != payload {
		return fmt.Errorf("echoed stream: got %q, want %q", got, payload)
	}
	finish(s, ch)
	return nil
}

func oneway(u string, n int) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := ch.Send(&struct{ Value int }{i}); err != nil {
			return fmt.Errorf("send %d: %v", i, err)
		}
	}
	ch.Close()
	finish(s, ch)
	return nil
}

// finish waits (bounded) for the peer's end-of-channel half-close, then closes the
// carrier gracefully: our write side first, then the rest once the peer has closed.
func finish(s *session, ch Sender) {
	if !ch.waitPeerClose(closeGrace) {
		logf("peer did not half-close channel %d within %v", ch.ref, closeGrace)
	}
	if cw, ok := s.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		select {
		case <-s.done:
		case <-time.After(closeGrace):
			logf("peer did not close the connection within %v", closeGrace)
		}
	}
	s.nc.Close()
}

// ---- printing ----

// format renders a decoded message on one line, JSON-like, maps in stream order.
func format(v interface{}) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(t)
	case []byte:
		return "<bin " + hex.EncodeToString(t) + ">"
	case float32:
		return strconv.FormatFloat(float64(t), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(t, 'g', -1, 64)
	case time.Time:
		return "<time " + t.Format(time.RFC3339Nano) + ">"
	case Sender:
		return fmt.Sprintf("<Sender ref %d>", t.ref)
	case Receiver:
		return fmt.Sprintf("<Receiver ref %d>", t.ref)
	case ByteStream:
		return fmt.Sprintf("<ByteStream ref %d>", t.ref)
	case OutStream:
		return fmt.Sprintf("<OutStream ref %d>", t.ref)
	case InStream:
		return fmt.Sprintf("<InStream ref %d>", t.ref)
	case codec.RawExt:
		return fmt.Sprintf("<ext %d %s>", t.Tag, hex.EncodeToString(t.Data))
	case kvs:
		parts := []string{}
		for i := 0; i+1 < len(t); i += 2 {
			parts = append(parts, format(t[i])+":"+format(t[i+1]))
		}
		return "{" + strings.Join(parts, ",") + "}"
	case map[interface{}]interface{}:
		parts := []string{}
		for k, v := range t {
			parts = append(parts, format(k)+":"+format(v))
		}
		sort.Strings(parts)
		return "{" + strings.Join(parts, ",") + "}"
	case []interface{}:
		parts := []string{}
		for _, e := range t {
			parts = append(parts, format(e))
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprintf("%v", v)
}

// clip shortens what goes to the stderr log.
func clip(s string) string {
	if len(s) > 300 {
		return fmt.Sprintf("%s...(%d chars)", s[:300], len(s))
	}
	return s
}

// ---- relay and dump: recording a session and reading it back frame by frame ----

// relay accepts one connection on LISTEN_URL, connects to TARGET_URL, copies both ways
// and records each direction's bytes; it exits when both directions have ended.
func relay(listenURL, targetURL, c2sFile, s2cFile string) {
	l := listen(listenURL)
	a, err := l.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	l.Close()
	b := dial(targetURL)
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, file string) {
		defer wg.Done()
		f, err := os.Create(file)
		if err != nil {
			fail("%v", err)
		}
		defer f.Close()
		io.Copy(io.MultiWriter(dst, f), src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	wg.Add(2)
	go pipe(b, a, c2sFile)
	go pipe(a, b, s2cFile)
	wg.Wait()
	a.Close()
	b.Close()
}

// dump prints each SPDY/3 frame of one recorded direction on a line; header pairs are
// sorted by name (their wire order is not fixed), DATA payloads in hex.
func dump(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	fr, err := spdy.NewFramer(io.Discard, bytes.NewReader(data))
	if err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch t := f.(type) {
		case *spdy.SynStreamFrame:
			fmt.Printf("SYN_STREAM stream=%d assoc=%d pri=%d slot=%d flags=%d headers=%s\n",
				t.StreamId, t.AssociatedToStreamId, t.Priority, t.Slot, t.CFHeader.Flags, headers(t.Headers))
		case *spdy.SynReplyFrame:
			fmt.Printf("SYN_REPLY stream=%d flags=%d headers=%s\n", t.StreamId, t.CFHeader.Flags, headers(t.Headers))
		case *spdy.HeadersFrame:
			fmt.Printf("HEADERS stream=%d flags=%d headers=%s\n", t.StreamId, t.CFHeader.Flags, headers(t.Headers))
		case *spdy.DataFrame:
			fmt.Printf("DATA stream=%d flags=%d len=%d %s\n", t.StreamId, t.Flags, len(t.Data), hex.EncodeToString(t.Data))
		case *spdy.RstStreamFrame:
			fmt.Printf("RST_STREAM stream=%d status=%d\n", t.StreamId, t.Status)
		case *spdy.SettingsFrame:
			fmt.Printf("SETTINGS %v\n", t.FlagIdValues)
		case *spdy.PingFrame:
			fmt.Printf("PING id=%d\n", t.Id)
		case *spdy.GoAwayFrame:
			fmt.Printf("GOAWAY last=%d status=%d\n", t.LastGoodStreamId, t.Status)
		case *spdy.WindowUpdateFrame:
			fmt.Printf("WINDOW_UPDATE stream=%d delta=%d\n", t.StreamId, t.DeltaWindowSize)
		default:
			fmt.Printf("%T %+v\n", f, f)
		}
	}
}

func headers(h map[string][]string) string {
	parts := []string{}
	for k, vs := range h {
		parts = append(parts, strings.ToLower(k)+": "+strings.Join(vs, ","))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ", ") + "}"
}
