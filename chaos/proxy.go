package chaos

import (
	"net"
	"sync"
)

// proxy is a TCP forwarder in front of one connection path (a worker to a
// NATS server, or one NATS node's route to another): the kernel here has
// no netem and CI has no iptables, so a network cut is made here. A cut
// behaves as a network that drops every packet: connections stay open but
// nothing passes either way (the peers find out by their own pings), and
// new connections are accepted and then hang. Healing closes what hung, as
// the peers' TCP stacks would have by then, and lets new ones through.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	// healed is closed and replaced at every heal: a copy blocked by a cut
	// waits on it.
	healed chan struct{}
}

// newProxy listens on a free loopback port and forwards to target.
func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, healed: make(chan struct{})}
	go p.accept()
	return p, nil
}

// Addr is where to connect instead of the target.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.serve(c)
	}
}

func (p *proxy) serve(c net.Conn) {
	if !p.track(c) {
		return
	}
	defer p.untrack(c)
	if !p.pass() {
		return // accepted during a cut: it hung, and the heal closed it
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the target is down: the client sees its connection close
	}
	if !p.track(up) {
		return
	}
	defer p.untrack(up)
	done := make(chan struct{}, 2)
	go func() { p.copy(up, c); done <- struct{}{} }()
	go func() { p.copy(c, up); done <- struct{}{} }()
	<-done
}

// copy moves bytes from src to dst until either side ends; during a cut it
// holds what it read until the heal, which closes both sides.
func (p *proxy) copy(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed side: the other copy ends with it
		}
	}
}

// pass waits while the path is cut; false once a heal ended the wait (the
// connection is to close) or the proxy is closed.
func (p *proxy) pass() bool {
	p.mu.Lock()
	if !p.cut {
		p.mu.Unlock()
		return true
	}
	healed := p.healed
	p.mu.Unlock()
	<-healed
	return false
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Cut stops every byte on the path until Heal.
func (p *proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
}

// Heal ends a cut: the connections that were open across it are closed,
// and new ones pass.
func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		return
	}
	p.cut = false
	for c := range p.conns {
		c.Close()
	}
	close(p.healed)
	p.healed = make(chan struct{})
}

// Close stops listening and closes every connection.
func (p *proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	if p.cut {
		p.cut = false
		close(p.healed)
	}
	p.mu.Unlock()
}
