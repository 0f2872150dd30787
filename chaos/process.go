package chaos

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/passkeys/worker/internal/freeaddr"
)

// process is one program of the campaign (a nats-server or a worker),
// started again and again with the same arguments, its output appended to
// one log file.
type process struct {
	name string
	bin  string
	args []string
	env  []string
	log  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed once cmd has exited
	frozen bool
}

// start starts the program unless it runs.
func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	fmt.Fprintf(out, "\n===== chaos: %s started at %s\n", p.name, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done, p.frozen = cmd, done, false
	return nil
}

// running tells whether the program runs (frozen or not).
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill ends the program at once (SIGKILL, a frozen one too) and waits
// for it to go.
func (p *process) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.frozen = nil, false
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// signal sends sig to a running program.
func (p *process) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(sig)
		p.frozen = sig == syscall.SIGSTOP
	}
}

// freeze stops the program (SIGSTOP) without telling it.
func (p *process) freeze() { p.signal(syscall.SIGSTOP) }

// thaw lets a frozen program go on (SIGCONT).
func (p *process) thaw() { p.signal(syscall.SIGCONT) }

// exited tells, for a program that should run, that it stopped by itself,
// with the end of its log.
func (p *process) exited() (bool, string) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return false, ""
	}
	select {
	case <-done:
		return true, p.tail(2000)
	default:
		return false, ""
	}
}

// tail is the end of the program's log.
func (p *process) tail(n int) string {
	raw, _ := os.ReadFile(p.log)
	return string(raw[max(0, len(raw)-n):])
}

// waitLog waits until the log, past offset from, holds want and addr
// accepts connections, or the program exits, or the time runs out.
func (p *process) waitLog(from int64, addr, want string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			if raw, _ := os.ReadFile(p.log); int64(len(raw)) > from && strings.Contains(string(raw[from:]), want) {
				return nil
			}
		}
		if gone, said := p.exited(); gone {
			return fmt.Errorf("%s exited: %s", p.name, said)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v: %s", p.name, limit, p.tail(2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logSize is the log's length now, for waitLog.
func (p *process) logSize() int64 {
	st, err := os.Stat(p.log)
	if err != nil {
		return 0
	}
	return st.Size()
}

// freeAddr is a loopback address with a port nobody listened on a moment
// ago (freeaddr.Loopback: below the ephemeral range, so that no outgoing
// connection takes it before its server listens).
func freeAddr() (string, error) { return freeaddr.Loopback() }
