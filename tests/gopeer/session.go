// session.go - a libchan session over one spdystream connection, written after the
// behaviour of docker/libchan's spdy package (PROTOCOL.md sections 3-5):
//
//   - a top-level channel is a SPDY stream opened with {libchan-ref: N} and no parent;
//   - a channel end or byte stream named in a message is a sub-stream opened while the
//     message is encoded (so before its DATA frame), with {libchan-ref, libchan-parent-ref}
//     and associated-to-stream-id 0; its ref travels in a msgpack ext (types 1-5);
//   - every incoming stream gets SYN_REPLY {:status: 200};
//   - a message is written as one DATA frame (split at 4 KiB) and read as a continuous
//     msgpack byte sequence; Close = empty DATA frame with FIN; the receiving side
//     half-closes (FIN) when it reaches end-of-channel.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/spdystream"
	"github.com/ugorji/go/codec"
)

// Ext types of PROTOCOL.md section 4, as seen by the receiver of the message.
const (
	extDuplexStream = 1 // ByteStream: it may read and write
	extOutStream    = 2 // OutStream: it writes, the message's sender reads
	extInStream     = 3 // InStream: it reads, the message's sender writes
	extSender       = 4 // Sender: it sends, the message's sender receives
	extReceiver     = 5 // Receiver: it receives, the message's sender sends
	extTime         = 6 // 8-byte BE Unix seconds + 4-byte BE nanoseconds
)

// refTimeout bounds the wait for the SYN_STREAM of a ref met in a message.
const refTimeout = 10 * time.Second

type session struct {
	conn   *spdystream.Connection
	nc     net.Conn
	refSeq uint64        // last ref handed out; the first one is 2, as in docker/libchan
	done   chan struct{} // closed when the connection's read loop has ended

	mu       sync.Mutex
	cond     *sync.Cond
	incoming []*endpoint                   // top-level channels opened by the peer, not yet accepted
	peerRefs map[uint64]*spdystream.Stream // sub-streams opened by the peer, by their libchan-ref
	closed   bool

	logf func(format string, args ...interface{})
}

// endpoint is one SPDY stream used as a channel or a byte stream. One made locally for a
// message (newEndpoint) gets its stream when the message naming it is encoded; locally it
// is then used in the role opposite to the one the message gives the peer.
type endpoint struct {
	sess     *session
	ref      uint64
	stream   *spdystream.Stream
	handle   *codec.MsgpackHandle // encodes with this stream as libchan-parent-ref
	rd       *bufio.Reader        // the receiving side's continuous msgpack decoder
	dec      *codec.Decoder
	peerDone chan struct{} // closed when the peer half-closed (only for streams we send on)
}

// The Go types that map to the ext types. Sender/Receiver/... name the role of whoever
// *receives* the message, exactly like the ext table of PROTOCOL.md. The blank field is
// there because ugorji's codec hands WriteExt a wrong pointer for a struct made of one
// pointer (Go stores it directly in an interface) when it is a map value.
type (
	Sender struct {
		*endpoint
		_ int
	}
	Receiver struct {
		*endpoint
		_ int
	}
	ByteStream struct {
		*endpoint
		_ int
	}
	OutStream struct {
		*endpoint
		_ int
	}
	InStream struct {
		*endpoint
		_ int
	}
)

func newSession(nc net.Conn, server bool, logf func(string, ...interface{})) (*session, error) {
	conn, err := spdystream.NewConnection(nc, server)
	if err != nil {
		return nil, err
	}
	s := &session{conn: conn, nc: nc, refSeq: 1, done: make(chan struct{}),
		peerRefs: map[uint64]*spdystream.Stream{}, logf: logf}
	s.cond = sync.NewCond(&s.mu)
	go func() {
		conn.Serve(s.handleStream)
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
		close(s.done)
	}()
	return s, nil
}

// handleStream runs in spdystream's frame worker for every incoming SYN_STREAM; it must
// not block.
func (s *session) handleStream(st *spdystream.Stream) {
	h := st.Headers()
	ref, err := strconv.ParseUint(h.Get("libchan-ref"), 10, 64)
	parent := h.Get("libchan-parent-ref")
	if err == nil && parent != "" {
		_, err = strconv.ParseUint(parent, 10, 64)
	}
	if err != nil {
		// docker/libchan replies 200 and then resets a stream whose headers it cannot parse.
		s.logf("stream %d: bad libchan headers %v: reset", st.Identifier(), h)
		st.SendReply(http.Header{":status": {"200"}}, false)
		st.Reset()
		return
	}
	s.mu.Lock()
	if parent == "" {
		s.incoming = append(s.incoming, &endpoint{sess: s, ref: ref, stream: st})
	} else {
		s.peerRefs[ref] = st
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if err := st.SendReply(http.Header{":status": {"200"}}, false); err != nil {
		// spdystream then drops the stream's DATA ("not replied") and its Close
		// never returns (it waits for the reply): say so on stderr
		s.logf("stream %d: SYN_REPLY failed: %v", st.Identifier(), err)
	}
}

func (s *session) nextRef() uint64 { return atomic.AddUint64(&s.refSeq, 1) }

// accept waits for the next top-level channel opened by the peer.
func (s *session) accept() (Receiver, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.incoming) == 0 && !s.closed {
		s.cond.Wait()
	}
	if len(s.incoming) == 0 {
		return Receiver{}, io.EOF
	}
	ep := s.incoming[0]
	s.incoming = s.incoming[1:]
	return Receiver{endpoint: ep}, nil
}

// open opens a new top-level channel to the peer.
func (s *session) open() (Sender, error) {
	ep := s.newEndpoint()
	ep.ref = s.nextRef()
	st, err := s.conn.CreateStream(http.Header{"libchan-ref": {strconv.FormatUint(ep.ref, 10)}}, nil, false)
	if err != nil {
		return Sender{}, err
	}
	ep.bind(st, true)
	return Sender{endpoint: ep}, nil
}

func (s *session) newEndpoint() *endpoint { return &endpoint{sess: s} }

// waitPeerRef returns the stream the peer opened for ref, waiting (bounded) for its
// SYN_STREAM: another implementation may send it after the message that names it.
func (s *session) waitPeerRef(ref uint64) (*spdystream.Stream, error) {
	deadline := time.Now().Add(refTimeout)
	t := time.AfterFunc(refTimeout, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	defer t.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if st, ok := s.peerRefs[ref]; ok {
			return st, nil
		}
		if s.closed {
			return nil, fmt.Errorf("ref %d: connection closed before its stream was opened", ref)
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("ref %d: no stream opened for it within %v", ref, refTimeout)
		}
		s.cond.Wait()
	}
}

// bind attaches a stream; when we are the sending side of a channel, a goroutine drains
// the stream (nothing should come) to learn when the peer half-closes it.
func (ep *endpoint) bind(st *spdystream.Stream, weSend bool) {
	ep.stream = st
	if weSend {
		ep.peerDone = make(chan struct{})
		go func() { io.Copy(io.Discard, st); close(ep.peerDone) }()
	}
}

func (ep *endpoint) codecHandle() *codec.MsgpackHandle {
	if ep.handle == nil {
		ep.handle = newHandle(ep.sess, ep.ref)
	}
	return ep.handle
}

// maxFrame is the size of the bufio.Writer docker/libchan's sender flushes once per
// message: a message up to 4 KiB is one DATA frame, a longer one is split.
const maxFrame = 4096

// Send encodes msg (opening the sub-streams it names, so their SYN_STREAMs go first) and
// writes it in DATA frames of at most maxFrame bytes: one frame for a small message.
func (ep *endpoint) Send(msg interface{}) error {
	var buf []byte
	if err := codec.NewEncoderBytes(&buf, ep.codecHandle()).Encode(msg); err != nil {
		return err
	}
	for len(buf) > 0 {
		n := len(buf)
		if n > maxFrame {
			n = maxFrame
		}
		if _, err := ep.stream.Write(buf[:n]); err != nil {
			return err
		}
		buf = buf[n:]
	}
	return nil
}

// Receive decodes the next message. Like docker/libchan's receiver it decodes the
// stream's bytes as one continuous msgpack sequence (a message may span DATA frames, or
// share one); at end-of-channel it half-closes the stream (FIN) and returns io.EOF. A
// message cut short by the end of the stream, or that does not decode, is an error: the
// stream is then reset (RST_STREAM CANCEL).
func (ep *endpoint) Receive(v interface{}) error {
	_, err := ep.receive(v)
	return err
}

// ReceiveAny is Receive into a generic value; a map keeps its key order (as a kvs).
func (ep *endpoint) ReceiveAny() (interface{}, error) { return ep.receive(nil) }

func (ep *endpoint) receive(v interface{}) (interface{}, error) {
	if ep.rd == nil {
		ep.rd = bufio.NewReader(ep.stream)
		ep.dec = codec.NewDecoder(ep.rd, ep.codecHandle())
	}
	first, err := ep.rd.Peek(1)
	if err == io.EOF {
		ep.stream.Close()
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	if v == nil {
		if b := first[0]; b&0xf0 == 0x80 || b == 0xde || b == 0xdf { // fixmap, map16, map32
			var m kvs
			err = ep.dec.Decode(&m)
			v = m
		} else {
			var x interface{}
			err = ep.dec.Decode(&x)
			v = x
		}
	} else {
		err = ep.dec.Decode(v)
	}
	if err != nil {
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("message cut short by the end of the stream")
		}
		ep.stream.Reset()
		return nil, err
	}
	return v, nil
}

// Byte-stream side: the DATA payloads are the bytes, FIN is EOF.
func (ep *endpoint) Read(p []byte) (int, error)  { return ep.stream.Read(p) }
func (ep *endpoint) Write(p []byte) (int, error) { return ep.stream.Write(p) }

// Close sends an empty DATA frame with FIN: end of channel, or EOF of our byte stream side.
func (ep *endpoint) Close() error { return ep.stream.Close() }

// waitPeerClose waits (bounded) until the peer half-closed a stream we send on.
func (ep *endpoint) waitPeerClose(d time.Duration) bool {
	select {
	case <-ep.peerDone:
		return true
	case <-time.After(d):
		return false
	}
}

// kvs is a msgpack map kept in stream order: key, value, key, value...
type kvs []interface{}

func (kvs) MapBySlice() {}

// refExt maps one of the Go types above to its ext type. parent is the ref of the channel
// the message is sent on (the libchan-parent-ref of the sub-streams it opens).
type refExt struct {
	sess   *session
	parent uint64
	tag    byte
}

func (x refExt) WriteExt(v interface{}) []byte {
	var ep *endpoint
	switch t := v.(type) { // a pointer for a struct field, a value for a map value
	case *Sender:
		ep = t.endpoint
	case Sender:
		ep = t.endpoint
	case *Receiver:
		ep = t.endpoint
	case Receiver:
		ep = t.endpoint
	case *ByteStream:
		ep = t.endpoint
	case ByteStream:
		ep = t.endpoint
	case *OutStream:
		ep = t.endpoint
	case OutStream:
		ep = t.endpoint
	case *InStream:
		ep = t.endpoint
	case InStream:
		ep = t.endpoint
	}
	if ep == nil || ep.stream != nil {
		// Forwarding a stream that already exists (section 5, step 2) is not needed here.
		panic(fmt.Errorf("ext %d: only a fresh endpoint (newEndpoint) can be sent", x.tag))
	}
	if x.parent == 0 {
		panic(errors.New("channel ends can only be encoded by a channel's Send"))
	}
	ep.ref = x.sess.nextRef()
	h := http.Header{
		"libchan-ref":        {strconv.FormatUint(ep.ref, 10)},
		"libchan-parent-ref": {strconv.FormatUint(x.parent, 10)},
	}
	st, err := x.sess.conn.CreateStream(h, nil, false) // associated-to-stream-id 0, as Go libchan
	if err != nil {
		panic(err)
	}
	ep.bind(st, x.tag == extReceiver) // the peer receives on it: we send
	return refBytes(ep.ref)
}

func (x refExt) ReadExt(dst interface{}, src []byte) {
	var ref uint64
	switch len(src) {
	case 4:
		ref = uint64(binary.BigEndian.Uint32(src))
	case 8:
		ref = binary.BigEndian.Uint64(src)
	default:
		panic(fmt.Errorf("ext %d: ref of %d bytes (want 4 or 8)", x.tag, len(src)))
	}
	st, err := x.sess.waitPeerRef(ref)
	if err != nil {
		panic(err)
	}
	ep := &endpoint{sess: x.sess, ref: ref}
	ep.bind(st, x.tag == extSender) // we were given a Sender: we send
	switch d := dst.(type) {
	case *Sender:
		*d = Sender{endpoint: ep}
	case *Receiver:
		*d = Receiver{endpoint: ep}
	case *ByteStream:
		*d = ByteStream{endpoint: ep}
	case *OutStream:
		*d = OutStream{endpoint: ep}
	case *InStream:
		*d = InStream{endpoint: ep}
	}
}

// refBytes is the ext payload: the ref big-endian, 4 bytes when it fits (fixext 4).
func refBytes(ref uint64) []byte {
	if ref <= 0xffffffff {
		b := make([]byte, 4)
		binary.BigEndian.PutUint32(b, uint32(ref))
		return b
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, ref)
	return b
}

type timeExt struct{}

func (timeExt) WriteExt(v interface{}) []byte {
	t := v.(*time.Time)
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, uint64(t.Unix()))
	binary.BigEndian.PutUint32(b[8:], uint32(t.Nanosecond()))
	return b
}

func (timeExt) ReadExt(dst interface{}, src []byte) {
	if len(src) != 12 {
		panic(fmt.Errorf("ext 6: time of %d bytes (want 12)", len(src)))
	}
	*dst.(*time.Time) = time.Unix(int64(binary.BigEndian.Uint64(src)), int64(binary.BigEndian.Uint32(src[8:]))).UTC()
}

// newHandle builds the msgpack handle: new spec (str8, bin, ext; str decodes as a Go
// string, bin as []byte, so an echo keeps each type) and the libchan ext types.
func newHandle(s *session, parent uint64) *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{WriteExt: true}
	h.TimeNotBuiltin = true // time is libchan's ext 6, not msgpack's timestamp ext -1
	exts := []struct {
		v   interface{}
		tag byte
	}{{ByteStream{}, extDuplexStream}, {OutStream{}, extOutStream}, {InStream{}, extInStream},
		{Sender{}, extSender}, {Receiver{}, extReceiver}}
	for _, e := range exts {
		if err := h.SetBytesExt(reflect.TypeOf(e.v), uint64(e.tag), refExt{s, parent, e.tag}); err != nil {
			panic(err)
		}
	}
	if err := h.SetBytesExt(reflect.TypeOf(time.Time{}), extTime, timeExt{}); err != nil {
		panic(err)
	}
	return h
}
