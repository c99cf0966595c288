// stress.go - extra gopeer modes for tests/interop/test_interop_stress.c. The modes of
// gopeer.go are untouched; these are reached only through the names below.
//
//	gopeer dial URL --partial        a request carrying a Sender (Ret), an InStream (In)
//	                                 and a Receiver (Rx); 13 bytes on In, one message on
//	                                 Rx, then the first 4 KiB of a 100 KB message on the
//	                                 channel; prints READY and waits to be killed
//	gopeer dial URL --flood C N      C channels at once, N messages {Value, Ch} each,
//	                                 every channel closed; FLOOD DONE once the peer
//	                                 half-closed them all
//	gopeer dial URL --rexec SIZE     {Cmd, Ret, Stdin (InStream), Stdout (OutStream)}:
//	                                 writes SIZE bytes on Stdin, reads Stdout to EOF, one
//	                                 reply on Ret; prints REXEC wrote=.. werr=.. read=..
//	                                 match=.. reply=..
//	gopeer dial URL --big N1,N2,..   {Seq, Blob (bin of Ni bytes)} on one channel (prints
//	                                 BIGSIZE seq encoded-bytes first), then {Seq: 99} on a
//	                                 second channel; BIG DONE
//	gopeer dial URL --flood-req C N  C channels at once, N requests {Value, Ch, Ret} each;
//	                                 each waits for its reply {Echo: Value, Ch} and
//	                                 for Ret's end; FLOODREQ DONE
//	gopeer dial URL --nest           {Ret: Sender}; expects on Ret {Inner: Receiver}, on
//	                                 Inner {Deep: Sender, Bytes: InStream}; reads Bytes to
//	                                 EOF, sends {Got: n} on Deep, closes it; NEST n
//	gopeer serve URL --cat [--once]  for each request {Ret, InStream, OutStream}: copies
//	                                 the InStream into the OutStream, closes it, replies
//	                                 {Bytes: n} on Ret; prints CAT n
package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ugorji/go/codec"
)

const stressTimeout = 120 * time.Second

func isStressDial(mode string) bool {
	switch mode {
	case "--partial", "--flood", "--rexec", "--big", "--flood-req", "--nest":
		return true
	}
	return false
}

func isStressServe(mode string) bool { return mode == "--cat" }

func stressDial(args []string) {
	var err error
	done := make(chan struct{})
	switch {
	case len(args) == 2 && args[1] == "--partial":
		go func() { err = partial(args[0]); close(done) }()
	case len(args) == 4 && args[1] == "--flood":
		c, e1 := strconv.Atoi(args[2])
		n, e2 := strconv.Atoi(args[3])
		if e1 != nil || e2 != nil || c < 1 || n < 0 {
			usage()
		}
		go func() { err = flood(args[0], c, n); close(done) }()
	case len(args) == 4 && args[1] == "--flood-req":
		c, e1 := strconv.Atoi(args[2])
		n, e2 := strconv.Atoi(args[3])
		if e1 != nil || e2 != nil || c < 1 || n < 0 {
			usage()
		}
		go func() { err = floodReq(args[0], c, n); close(done) }()
	case len(args) == 2 && args[1] == "--nest":
		go func() { err = nest(args[0]); close(done) }()
	case len(args) == 3 && args[1] == "--rexec":
		n, e := strconv.Atoi(args[2])
		if e != nil || n < 0 {
			usage()
		}
		go func() { err = rexec(args[0], n); close(done) }()
	case len(args) == 3 && args[1] == "--big":
		var sizes []int
		for _, f := range strings.Split(args[2], ",") {
			n, e := strconv.Atoi(f)
			if e != nil || n < 0 {
				usage()
			}
			sizes = append(sizes, n)
		}
		go func() { err = big(args[0], sizes); close(done) }()
	default:
		usage()
	}
	select {
	case <-done:
	case <-time.After(stressTimeout):
		err = fmt.Errorf("timeout after %v", stressTimeout)
	}
	if err != nil {
		out("ERROR %v", err)
		fail("%v", err)
	}
}

// ---- --partial ----

type partialReq struct {
	Value int
	Ret   Sender
	In    InStream
	Rx    Receiver
}

func partial(u string) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	ret, in, rx := s.newEndpoint(), s.newEndpoint(), s.newEndpoint()
	req := partialReq{Value: 1, Ret: Sender{endpoint: ret}, In: InStream{endpoint: in}, Rx: Receiver{endpoint: rx}}
	if err := ch.Send(&req); err != nil {
		return fmt.Errorf("send: %v", err)
	}
	if _, err := in.Write([]byte("partial-bytes")); err != nil {
		return fmt.Errorf("in write: %v", err)
	}
	if err := rx.Send(&struct{ Value int }{2}); err != nil {
		return fmt.Errorf("rx send: %v", err)
	}
	var buf []byte
	big := struct {
		Value int
		Blob  []byte
	}{3, make([]byte, 100000)}
	if err := codec.NewEncoderBytes(&buf, ch.codecHandle()).Encode(&big); err != nil {
		return err
	}
	if _, err := ch.stream.Write(buf[:maxFrame]); err != nil {
		return fmt.Errorf("partial write: %v", err)
	}
	go func() { // read what the peer sends on Ret, until we are stopped or killed
		n := 0
		for {
			if _, err := ret.ReceiveAny(); err != nil {
				logf("ret: %d messages, then %v", n, err)
				return
			}
			n++
		}
	}()
	out("READY")
	select {}
}

// ---- --flood ----

func flood(u string, c, n int) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	chans := make([]Sender, c)
	for i := range chans {
		if chans[i], err = s.open(); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for i := range chans {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for k := 0; k < n; k++ {
				if err := chans[i].Send(&struct{ Value, Ch int }{k, i}); err != nil {
					errs <- fmt.Errorf("channel %d message %d: %v", i, k, err)
					return
				}
			}
			chans[i].Close()
		}(i)
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	for i := range chans {
		if !chans[i].waitPeerClose(60 * time.Second) {
			return fmt.Errorf("peer did not half-close channel %d", chans[i].ref)
		}
	}
	out("FLOOD DONE")
	finishQuiet(s)
	return nil
}

// finishQuiet half-closes the carrier and waits (bounded) for the peer to close it.
func finishQuiet(s *session) {
	if cw, ok := s.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			logf("peer did not close the connection within 10s")
		}
	}
	s.nc.Close()
}

// ---- --flood-req ----

type floodRequest struct {
	Value, Ch int
	Ret       Sender
}

func floodReq(u string, c, n int) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	chans := make([]Sender, c)
	for i := range chans {
		if chans[i], err = s.open(); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, c)
	for i := range chans {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for k := 0; k < n; k++ {
				ret := s.newEndpoint()
				if err := chans[i].Send(&floodRequest{k, i, Sender{endpoint: ret}}); err != nil {
					errs <- fmt.Errorf("channel %d request %d: %v", i, k, err)
					return
				}
				rep, err := ret.ReceiveAny()
				if err != nil {
					errs <- fmt.Errorf("channel %d request %d: no reply: %v", i, k, err)
					return
				}
				want := fmt.Sprintf("{\"Echo\":%d,\"Ch\":%d}", k, i)
				if got := format(rep); got != want {
					errs <- fmt.Errorf("channel %d request %d: reply %s, want %s", i, k, got, want)
					return
				}
				if _, err := ret.ReceiveAny(); err != io.EOF {
					errs <- fmt.Errorf("channel %d request %d: after the reply: %v (want EOF)", i, k, err)
					return
				}
			}
			chans[i].Close()
		}(i)
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	for i := range chans {
		if !chans[i].waitPeerClose(60 * time.Second) {
			return fmt.Errorf("peer did not half-close channel %d", chans[i].ref)
		}
	}
	out("FLOODREQ DONE")
	finishQuiet(s)
	return nil
}

// ---- --nest ----

type nestInner struct {
	Deep  Sender
	Bytes InStream
}

func nest(u string) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	ret := s.newEndpoint()
	if err := ch.Send(&struct{ Ret Sender }{Sender{endpoint: ret}}); err != nil {
		return err
	}
	var lvl1 struct{ Inner Receiver }
	if err := ret.Receive(&lvl1); err != nil {
		return fmt.Errorf("level 1: %v", err)
	}
	var lvl2 nestInner
	if err := lvl1.Inner.Receive(&lvl2); err != nil {
		return fmt.Errorf("level 2: %v", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, lvl2.Bytes)
	if err != nil {
		return fmt.Errorf("level 3 bytes: %v after %d", err, n)
	}
	want := sha256.New()
	buf := make([]byte, n)
	pattern(buf, 0)
	want.Write(buf)
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) {
		return fmt.Errorf("level 3 bytes: %d bytes, not the pattern", n)
	}
	if err := lvl2.Deep.Send(&struct{ Got int64 }{n}); err != nil {
		return fmt.Errorf("level 3 send: %v", err)
	}
	lvl2.Deep.Close()
	if _, err := lvl1.Inner.ReceiveAny(); err != io.EOF {
		return fmt.Errorf("level 2 after its message: %v (want EOF)", err)
	}
	if _, err := ret.ReceiveAny(); err != io.EOF {
		return fmt.Errorf("level 1 after its message: %v (want EOF)", err)
	}
	out("NEST %d", n)
	ch.Close()
	finish(s, ch)
	return nil
}

// ---- --rexec ----

type rexecReq struct {
	Cmd    string
	Ret    Sender
	Stdin  InStream
	Stdout OutStream
}

// pattern fills b with a deterministic pseudo-random sequence starting at offset off.
func pattern(b []byte, off int) {
	for i := range b {
		x := uint32(off + i)
		x ^= x >> 7
		x *= 0x9e3779b1
		b[i] = byte(x >> 24)
	}
}

func rexec(u string, size int) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	ret, stdin, stdout := s.newEndpoint(), s.newEndpoint(), s.newEndpoint()
	req := rexecReq{Cmd: "cat", Ret: Sender{endpoint: ret}, Stdin: InStream{endpoint: stdin},
		Stdout: OutStream{endpoint: stdout}}
	if err := ch.Send(&req); err != nil {
		return fmt.Errorf("send: %v", err)
	}
	inHash := sha256.New()
	wrote, werr := 0, error(nil)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		buf := make([]byte, 32*1024)
		for wrote < size {
			k := len(buf)
			if size-wrote < k {
				k = size - wrote
			}
			pattern(buf[:k], wrote)
			n, err := stdin.Write(buf[:k])
			inHash.Write(buf[:n])
			wrote += n
			if err != nil {
				werr = err
				break
			}
		}
		stdin.Close()
	}()
	outHash := sha256.New()
	read, rerr := io.Copy(outHash, stdout)
	<-wdone
	reply, err := ret.ReceiveAny()
	rep := ""
	if err != nil {
		rep = "<" + err.Error() + ">"
	} else {
		rep = format(reply)
	}
	match := int(read) == wrote && bytes.Equal(inHash.Sum(nil), outHash.Sum(nil))
	logf("rexec: wrote %d (%v), read %d (%v)", wrote, werr, read, rerr)
	out("REXEC wrote=%d werr=%v read=%d match=%v reply=%s", wrote, werr != nil, read, match, rep)
	ch.Close()
	finish(s, ch)
	return nil
}

// ---- --big ----

type bigMsg struct {
	Seq  int
	Blob []byte
}

func big(u string, sizes []int) error {
	s, err := newSession(dial(u), false, logf)
	if err != nil {
		return err
	}
	ch, err := s.open()
	if err != nil {
		return err
	}
	for i, n := range sizes {
		m := bigMsg{Seq: i, Blob: make([]byte, n)}
		pattern(m.Blob, i)
		var buf []byte
		if err := codec.NewEncoderBytes(&buf, ch.codecHandle()).Encode(&m); err != nil {
			return err
		}
		out("BIGSIZE %d %d", i, len(buf))
		if err := ch.Send(&m); err != nil {
			logf("big %d: %v", i, err) // the peer may have reset the stream
			break
		}
	}
	ch.Close()
	ch2, err := s.open()
	if err != nil {
		return err
	}
	if err := ch2.Send(&bigMsg{Seq: 99}); err != nil {
		return err
	}
	ch2.Close()
	if !ch2.waitPeerClose(30 * time.Second) {
		return fmt.Errorf("peer did not half-close channel %d", ch2.ref)
	}
	out("BIG DONE")
	finishQuiet(s)
	return nil
}

// ---- serve --cat ----

func stressServe(args []string) {
	if len(args) < 2 || len(args) > 3 || (len(args) == 3 && args[2] != "--once") {
		usage()
	}
	l := listen(args[0])
	for {
		nc, err := l.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		s, err := newSession(nc, true, logf)
		if err != nil {
			fail("%v", err)
		}
		conn := func() {
			var wg sync.WaitGroup
			for {
				r, err := s.accept()
				if err != nil {
					break
				}
				wg.Add(1)
				go func() { defer wg.Done(); catChannel(r) }()
			}
			wg.Wait()
			nc.Close()
		}
		if len(args) == 3 {
			conn()
			return
		}
		go conn()
	}
}

func catChannel(r Receiver) {
	for {
		msg, err := r.ReceiveAny()
		if err == io.EOF {
			return
		}
		if err != nil {
			out("ERROR channel %d: %v", r.ref, err)
			return
		}
		m, ok := msg.(kvs)
		if !ok {
			continue
		}
		var ret *Sender
		var in *InStream
		var outs *OutStream
		for i := 0; i+1 < len(m); i += 2 {
			switch a := m[i+1].(type) {
			case Sender:
				ret = &a
			case InStream:
				in = &a
			case OutStream:
				outs = &a
			}
		}
		if in == nil || outs == nil {
			out("ERROR channel %d: request without InStream and OutStream", r.ref)
			continue
		}
		n, cerr := io.Copy(outs, in)
		outs.Close()
		logf("cat: %d bytes (%v)", n, cerr)
		out("CAT %d", n)
		if ret != nil {
			if err := ret.Send(&struct{ Bytes int64 }{n}); err != nil {
				logf("reply: %v", err)
			}
			ret.Close()
		}
	}
}

var _ = os.Stdout
