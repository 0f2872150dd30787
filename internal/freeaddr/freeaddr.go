// Package freeaddr picks loopback addresses for the servers and workers
// that tests and the fault campaign start.
package freeaddr

import (
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// The ports handed out come from below the kernel's ephemeral range
// (32768-60999 by default, net.ipv4.ip_local_port_range). A port the
// kernel picked for a listener that was then closed goes back to that
// range, and can be handed to an outgoing connection (a NATS node dialling
// its routes) before the process meant for it listens there: a campaign
// failed on "bind: address already in use" that way.
const (
	lowest = 10000
	count  = 20000
)

var (
	mu    sync.Mutex
	given = map[int]bool{} // ports handed out by this process: never twice
)

// Loopback is a loopback address whose port nobody listened on a moment
// ago and this process has not handed out before.
func Loopback() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	for range 1000 {
		port := lowest + rand.IntN(count)
		if given[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		if err := l.Close(); err != nil {
			return "", err
		}
		given[port] = true
		return addr, nil
	}
	return "", errors.New("freeaddr: no free loopback port found")
}
