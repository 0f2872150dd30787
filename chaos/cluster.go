package chaos

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/passkeys/worker/internal/lazyfs"
)

// The NATS users' passwords in the campaign (the shipped nats.conf takes
// them from the environment).
var passwords = map[string]string{
	"PASSKEYS_WORKER_NATS_PASSWORD":      "chaos-worker",
	"PASSKEYS_SERVICE_NATS_PASSWORD":     "chaos-service",
	"PASSKEYS_ADMIN_NATS_PASSWORD":       "chaos-admin",
	"PASSKEYS_PROVISIONER_NATS_PASSWORD": "chaos-provisioner",
}

// machine is one of the cluster's three machines: a nats-server node and a
// worker, whose data (the node's JetStream store, the worker's bbolt files)
// is on one disk, a lazyfs mount that loses what was not fsynced when the
// machine's power is cut.
type machine struct {
	i           int
	dir         string
	disk, mount string
	fs          *lazyfs.FS // nil where FUSE is not to be had: no power faults
	client      string     // the node's own client address
	route       string     // the node's own route address
	nats        *process
	worker      *process
	// toNode[j] is this machine's worker's path to node j.
	toNode []*proxy
	// routeTo[j] is this machine's node's route to node j (nil for itself).
	routeTo []*proxy
}

func (m *machine) natsStore() string  { return filepath.Join(m.mount, "nats") }
func (m *machine) workerData() string { return filepath.Join(m.mount, "worker") }

// clockFile is where the nemesis says how the worker's clock is off
// (worker --fault-clock); no file, no fault.
func (m *machine) clockFile() string { return filepath.Join(m.dir, "clock") }

// cluster is the campaign's three machines.
type cluster struct {
	cfg      *Config
	machines []*machine
}

// userURL is the URL of addr for user (one of nats.conf's).
func userURL(user, addr string) string {
	pw := passwords["PASSKEYS_"+strings.ToUpper(strings.TrimPrefix(user, "passkeys-"))+"_NATS_PASSWORD"]
	return "nats://" + url.UserPassword(user, pw).String() + "@" + addr
}

// newCluster lays out three machines under cfg.Dir: ports, proxies, disks
// (mounted), node configurations and the processes' command lines. Nothing
// runs yet.
func newCluster(cfg *Config) (*cluster, error) {
	c := &cluster{cfg: cfg}
	for i := range 3 {
		m := &machine{i: i, dir: filepath.Join(cfg.Dir, fmt.Sprintf("m%d", i+1))}
		m.disk, m.mount = filepath.Join(m.dir, "disk"), filepath.Join(m.dir, "mnt")
		for _, d := range []string{m.disk, m.mount} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return c, err
			}
		}
		var err error
		if m.client, err = freeAddr(); err != nil {
			return c, err
		}
		if m.route, err = freeAddr(); err != nil {
			return c, err
		}
		c.machines = append(c.machines, m)
	}
	for _, m := range c.machines {
		if err := c.layOut(m); err != nil {
			return c, err
		}
	}
	return c, nil
}

// layOut gives machine m its proxies, its disk and its processes.
func (c *cluster) layOut(m *machine) error {
	var routes, workerURLs []string
	for j, other := range c.machines {
		p, err := newProxy(other.client)
		if err != nil {
			return err
		}
		m.toNode = append(m.toNode, p)
		workerURLs = append(workerURLs, userURL("passkeys-worker", p.Addr()))
		if j == m.i {
			m.routeTo = append(m.routeTo, nil)
			continue
		}
		r, err := newProxy(other.route)
		if err != nil {
			return err
		}
		m.routeTo = append(m.routeTo, r)
		routes = append(routes, "nats-route://"+r.Addr())
	}
	// The worker tries its own machine's node first.
	workerURLs[0], workerURLs[m.i] = workerURLs[m.i], workerURLs[0]
	if c.cfg.Power {
		fs, err := lazyfs.Mount(m.disk, m.mount)
		if err != nil {
			return fmt.Errorf("machine %d's disk: %w", m.i+1, err)
		}
		m.fs = fs
	} else {
		m.mount = m.disk
	}
	conf, err := c.nodeConf(m, routes)
	if err != nil {
		return err
	}
	var env []string
	for k, v := range passwords {
		env = append(env, k+"="+v)
	}
	m.nats = &process{name: fmt.Sprintf("n%d", m.i+1), bin: c.cfg.NATSServer, env: env,
		args: []string{"-c", conf, "-sd", m.natsStore()}, log: filepath.Join(m.dir, "nats-server.log")}
	m.worker = &process{name: fmt.Sprintf("w%d", m.i+1), bin: c.cfg.Worker, log: filepath.Join(m.dir, "worker.log"),
		args: []string{"--nats-url", strings.Join(workerURLs, ","), "--jwks", filepath.Join(c.cfg.Dir, "jwks.json"),
			"--issuer", issuer, "--audience", audience, "--data-dir", m.workerData(), "--replicas", "3",
			"--create-stream=false", "--fault-clock", m.clockFile(), "--log-level", "info", "--log-format", "json"}}
	if len(c.cfg.Without) > 0 {
		m.worker.args = append(m.worker.args, "--without", strings.Join(c.cfg.Without, ","))
	}
	m.worker.args = append(m.worker.args, c.cfg.WorkerArgs...)
	return nil
}

// nodeConf writes machine m's node configuration: the shipped nats.conf
// (users, permissions, JetStream and its durability settings, pings)
// included as it is, with this machine's addresses and routes.
func (c *cluster) nodeConf(m *machine, routes []string) (string, error) {
	shipped, err := os.ReadFile(c.cfg.NATSConf)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(m.dir, "nats.conf"), shipped, 0o600); err != nil {
		return "", err
	}
	// The nodes know each other, and the workers know the nodes, only
	// through the proxies, so that a cut holds: no_advertise keeps the
	// nodes' client addresses from the workers, and each node gossips a
	// route address where nobody listens (a node dials a gossiped route
	// that is not one of its own configured ones).
	nowhere, err := freeAddr()
	if err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`server_name: n%d
listen: %q
include ./nats.conf
cluster {
  name: passkeys
  listen: %q
  advertise: %q
  routes: [%s]
  no_advertise: true
}
`, m.i+1, m.client, m.route, nowhere, strings.Join(routes, ", "))
	path := filepath.Join(m.dir, "node.conf")
	return path, os.WriteFile(path, []byte(conf), 0o600)
}

// startNode starts machine m's nats-server and waits until it listens for
// routes (a clustered server listens for clients first).
func (c *cluster) startNode(m *machine) error {
	from := m.nats.logSize()
	if err := m.nats.start(); err != nil {
		return err
	}
	return m.nats.waitLog(from, m.client, "Listening for route connections", time.Minute)
}

// natsURLs is every node's client address, for the campaign's clients
// (they are not cut off: the faults are the workers' and the nodes').
func (c *cluster) natsURLs(user string) string {
	var urls []string
	for _, m := range c.machines {
		urls = append(urls, userURL(user, m.client))
	}
	return strings.Join(urls, ",")
}

// powerCut cuts the power of the machines named: every process on them is
// killed at once, what their disks had not fsynced is lost, and they start
// again as a machine does when the power comes back.
func (c *cluster) powerCut(ms []*machine) error {
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() { m.worker.kill(); m.nats.kill() })
	}
	wg.Wait()
	for _, m := range ms {
		if m.fs != nil {
			if err := m.fs.PowerCut(); err != nil {
				return fmt.Errorf("machine %d's power cut: %w", m.i+1, err)
			}
		}
	}
	return c.boot(ms)
}

// boot starts the nodes of ms together (a node waits for its peers'
// routes), then their workers.
func (c *cluster) boot(ms []*machine) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for k, m := range ms {
		wg.Go(func() { errs[k] = c.startNode(m) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, m := range ms {
		if err := m.worker.start(); err != nil {
			return err
		}
	}
	return nil
}

// close stops everything and unmounts the disks.
func (c *cluster) close() error {
	var errs []error
	for _, m := range c.machines {
		if m.nats == nil {
			continue // laid out only in part
		}
		m.worker.kill()
		m.nats.kill()
		for _, p := range append(append([]*proxy{}, m.toNode...), m.routeTo...) {
			if p != nil {
				p.Close()
			}
		}
		if m.fs != nil {
			errs = append(errs, m.fs.Unmount())
		}
	}
	return errors.Join(errs...)
}

// healAll ends every cut and thaws every frozen process.
func (c *cluster) healAll() {
	for _, m := range c.machines {
		for _, p := range append(append([]*proxy{}, m.toNode...), m.routeTo...) {
			if p != nil {
				p.Heal()
			}
		}
		m.nats.thaw()
		m.worker.thaw()
	}
}
