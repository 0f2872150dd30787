// Package benchcmd is the benchmark's command line (cmd/bench): it measures
// throughput and latency of an embedded worker, or of the worker behind
// --nats-url, publishing through the same code as publisher revoke and
// sync (package publisher), beside the storage layer alone.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/passkeys/worker/app"
	"github.com/passkeys/worker/command"
	"github.com/passkeys/worker/internal/progress"
	"github.com/passkeys/worker/partition"
	"github.com/passkeys/worker/passkey"
	"github.com/passkeys/worker/publisher"
	"github.com/passkeys/worker/runner"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
)

// benchConfig is what bench was asked to do.
type benchConfig struct {
	users, removals, sequential, inFlight, maxBatch, partitions int
	dataDir                                                     string
	storage, storeNoSync, ceiling                               bool
	verify                                                      string
	cpuProfile                                                  string
	tokens, alg                                                 string // per-user or one; EdDSA or RS256

	keys *benchKeys // the embedded worker's keys; nil against --nats-url
}

// benchReport is the one JSON line bench prints.
type benchReport struct {
	Mode           string       `json:"mode"`
	StoreNoSync    bool         `json:"store_nosync,omitempty"`
	Users          int          `json:"users"`
	SyncSeconds    float64      `json:"sync_seconds"`
	Batch          *phaseReport `json:"batch,omitempty"`
	Sequential     *phaseReport `json:"sequential,omitempty"`
	StorageRate    float64      `json:"storage_removals_per_second,omitempty"`
	StorageBatch   int          `json:"storage_batch,omitempty"`
	RatioToStorage float64      `json:"ratio_to_storage,omitempty"`
	PeakRSSMB      float64      `json:"peak_rss_mb,omitempty"`
	Tokens         string       `json:"tokens"`
	Alg            string       `json:"alg"`
	// The transport's ceiling (a stand-in that only replies and acks) and
	// what the worker reaches of it, in the same run.
	CeilingBatch      *phaseReport `json:"ceiling_batch,omitempty"`
	CeilingSequential *phaseReport `json:"ceiling_sequential,omitempty"`
	RatioToCeiling    float64      `json:"ratio_to_ceiling,omitempty"`
	// With a token per user: the transport plus one signature check per
	// command (no cache), and what the worker reaches of it.
	VerifyCeilingBatch   *phaseReport `json:"verify_ceiling_batch,omitempty"`
	RatioToVerifyCeiling float64      `json:"ratio_to_verify_ceiling,omitempty"`
	P50AboveCeilingMs    float64      `json:"sequential_p50_above_ceiling_ms,omitempty"`
}

// phaseReport sums up one measured phase.
type phaseReport struct {
	Count     int            `json:"count"`
	Seconds   float64        `json:"seconds"`
	PerSecond float64        `json:"per_second"`
	P50ms     float64        `json:"p50_ms"`
	P90ms     float64        `json:"p90_ms"`
	P99ms     float64        `json:"p99_ms"`
	MaxMs     float64        `json:"max_ms"`
	Classes   map[string]int `json:"outcomes"`
}

// Bench is the benchmark, a publisher with more to do.
type Bench struct{ *publisher.Publisher }

// Run is bench's command line; it returns the exit status.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	p := &Bench{&publisher.Publisher{Program: "bench", Getenv: getenv, Stdout: stdout, Stderr: stderr}}
	return p.bench(ctx, args)
}

func (p *Bench) bench(ctx context.Context, args []string) int {
	var c benchConfig
	fs := p.Flags("", "")
	cl := publisher.ClientFlags(fs)
	c.flags(fs)
	if code, ok := p.Parse(fs, args, 0); !ok {
		return code
	}
	if err := c.validate(); err != nil {
		return p.Fail(publisher.ExitUsage, "%v", err)
	}
	var profile *os.File
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return p.Fail(publisher.ExitUsage, "%v", err)
		}
		defer f.Close()
		profile = f
	}
	embedded := !publisher.FlagSet(fs, "nats-url") && p.Getenv("PASSKEYS_NATS_URL") == ""
	cleanup, code, err := p.prepareBench(ctx, &c, cl, embedded)
	defer cleanup()
	if err != nil {
		return p.Fail(code, "%v", err)
	}
	nc, err := p.Connect(cl)
	if err != nil {
		return p.Fail(publisher.ExitFailed, "%v", err)
	}
	defer nc.Close()
	// Twice the lines in flight: a line is settled by its reply, which can
	// come before its publish's acknowledgement (on R3 it often does).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*c.inFlight))
	if err != nil {
		return p.Fail(publisher.ExitFailed, "%v", err)
	}
	rep := benchReport{Mode: map[bool]string{true: "embedded", false: "remote"}[embedded], Users: c.users, StoreNoSync: c.storeNoSync,
		Tokens: c.tokens, Alg: c.alg}
	if err := p.runBench(ctx, nc, js, cl, c, profile, &rep); err != nil {
		return p.Fail(publisher.ExitFailed, "%v", err)
	}
	rep.PeakRSSMB = peakRSSMB()
	if rep.PeakRSSMB > 0 {
		fmt.Fprintf(p.Stdout, "peak resident set of this process: %.0f MB\n", rep.PeakRSSMB)
	}
	line, _ := json.Marshal(rep)
	fmt.Fprintf(p.Stdout, "%s\n", line)
	return publisher.ExitOK
}

// flags adds the bench's own flags to fs.
func (c *benchConfig) flags(fs *flag.FlagSet) {
	fs.IntVar(&c.users, "users", 100_000, "users to create (each with 3 passkeys and a password) before measuring")
	fs.IntVar(&c.removals, "removals", 100_000, "removals to publish as a batch publisher does (0: skip); at most 3 per user")
	fs.IntVar(&c.sequential, "sequential", 2_000, "sequential request-reply removals by one client (0: skip)")
	fs.IntVar(&c.inFlight, "in-flight", 4096, "most batch removals published and not yet answered")
	fs.IntVar(&c.maxBatch, "max-batch", 1024, "the embedded worker's --max-batch")
	fs.IntVar(&c.partitions, "partitions", 8, "the embedded worker's --partitions (1: one partition's rate)")
	fs.StringVar(&c.dataDir, "data-dir", "", "the embedded worker's data directory (default: a new temporary one); with --nats-url, where the development key is")
	fs.BoolVar(&c.storage, "storage", true, "also measure the storage layer alone on the same number of users (the disk's ceiling)")
	fs.StringVar(&c.verify, "verify", "", "the embedded worker's verification rule (worker --verify): \"\" or zip215")
	fs.BoolVar(&c.storeNoSync, "store-nosync", false, "the embedded worker's --store-nosync: store commits not fsynced")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (bench and its embedded worker) during the batch removals to this file")
	fs.StringVar(&c.tokens, "tokens", "per-user", "per-user: each removal signed with its user's own token (self-service, as request-reply traffic is); one: every removal under one administrator token (a batch publisher)")
	fs.StringVar(&c.alg, "alg", "EdDSA", "the tokens' algorithm, EdDSA or RS256 (ZITADEL's default; about 1 ms a signature to mint); against --nats-url only EdDSA (the development key)")
	fs.BoolVar(&c.ceiling, "ceiling", true, "also measure the transport's ceiling: a stand-in consumer that only replies and acks, on a stream BENCH_CEILING the bench creates on its server")
}

// validate checks the flags that depend on each other.
func (c *benchConfig) validate() error {
	if c.removals+c.sequential > c.users*PasskeysPerUser {
		return errors.New("--removals plus --sequential may be at most 3 × --users")
	}
	if c.tokens != "per-user" && c.tokens != "one" {
		return fmt.Errorf("--tokens %q: want per-user or one", c.tokens)
	}
	if c.alg != "EdDSA" && c.alg != "RS256" {
		return fmt.Errorf("--alg %q: want EdDSA or RS256", c.alg)
	}
	return nil
}

// prepareBench starts the embedded worker (in a new temporary data
// directory unless --data-dir says) when no NATS URL was given, and mints a
// token with the development key when none was given. cleanup undoes it;
// on an error, code is the exit status.
func (p *Bench) prepareBench(ctx context.Context, c *benchConfig, cl *publisher.Client, embedded bool) (cleanup func(), code int, err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	if embedded {
		if c.dataDir == "" {
			dir, err := os.MkdirTemp("", "passkeys-bench-")
			if err != nil {
				return cleanup, publisher.ExitFailed, err
			}
			undo = append(undo, func() { os.RemoveAll(dir) })
			c.dataDir = dir
		}
		if c.keys, err = newBenchKeys(c.dataDir); err != nil {
			return cleanup, publisher.ExitFailed, err
		}
		stopWorker, url, err := startEmbeddedWorker(ctx, *c, p.Stderr)
		if err != nil {
			return cleanup, publisher.ExitFailed, fmt.Errorf("start the embedded worker: %w", err)
		}
		undo = append(undo, stopWorker)
		cl.NATSURL = url
		if cl.Bearer, err = c.keys.mint(c.alg, "bench-admin", true); err != nil {
			return cleanup, publisher.ExitFailed, err
		}
		return cleanup, publisher.ExitOK, nil
	}
	// Against --nats-url: the development key in --data-dir (./data), which
	// a worker run with --jwks from `publisher jwks` trusts, signs unless a
	// token was given.
	dir := c.dataDir
	if dir == "" {
		dir = "./data"
	}
	if c.keys, err = devKeys(dir); err != nil && (c.tokens == "per-user" || cl.Bearer == "" && cl.BearerFile == "") {
		return cleanup, publisher.ExitUsage, fmt.Errorf("no development key in %s to sign tokens with: %w", dir, err)
	}
	if cl.Bearer == "" && cl.BearerFile == "" {
		if cl.Bearer, err = c.keys.mint(c.alg, "bench-admin", true); err != nil {
			return cleanup, publisher.ExitUsage, err
		}
	}
	return cleanup, publisher.ExitOK, nil
}

// runBench runs the phases: users created through sync, batch removals
// (with the CPU profile, when asked for), sequential removals, and the
// storage layer alone; each phase's figures go into rep and to stdout.
func (p *Bench) runBench(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, c benchConfig, profile *os.File, rep *benchReport) error {
	run := randomHex(4)
	var tokens []string // per user, when --tokens per-user
	if c.tokens == "per-user" {
		start := time.Now()
		var err error
		if tokens, err = c.keys.userTokens(c.alg, c.users); err != nil {
			return err
		}
		fmt.Fprintf(p.Stdout, "minted %d %s tokens, one per user, in %.1fs\n", c.users, c.alg, time.Since(start).Seconds())
	}
	if err := p.syncUsers(ctx, nc, js, cl, c, run, rep); err != nil {
		return err
	}
	removalJob := func(k int) publisher.Job {
		subject, body := removal(c.users, k)
		j := publisher.Job{Subject: subject, Body: body}
		if tokens != nil {
			j.Bearer = tokens[k%c.users]
		}
		return j
	}
	if c.removals > 0 {
		if err := p.batchRemovals(ctx, nc, js, cl, c, run, profile, removalJob, rep); err != nil {
			return err
		}
	}
	sequential := func(k int) publisher.Job {
		j := removalJob(c.removals + k)
		j.Subject, _ = partition.EndpointOf(j.Subject)
		return j
	}
	if c.sequential > 0 {
		var err error
		if rep.Sequential, err = p.requestEach(ctx, nc, cl, c.sequential, sequential); err != nil {
			return fmt.Errorf("sequential: %w", err)
		}
		printPhase(p.Stdout, "sequential removals (one client, request-reply)", rep.Sequential)
	}
	if c.ceiling {
		if err := p.measureCeiling(ctx, nc, js, cl, c, run, removalJob, sequential, rep); err != nil {
			return fmt.Errorf("ceiling: %w", err)
		}
	}
	if c.storage && c.removals > 0 {
		rate, err := storageRate(c.users, c.removals, c.maxBatch)
		if err != nil {
			return fmt.Errorf("storage: %w", err)
		}
		rep.StorageRate, rep.StorageBatch = rate, c.maxBatch
		rep.RatioToStorage = rep.Batch.PerSecond / rate
		fmt.Fprintf(p.Stdout, "storage layer alone, %d removals per transaction: %.0f removals/s; end to end is %.2f of it\n",
			c.maxBatch, rate, rep.RatioToStorage)
	}
	return nil
}

// syncUsers creates the users through sync, as a batch publisher would.
func (p *Bench) syncUsers(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, c benchConfig, run string, rep *benchReport) error {
	start := time.Now()
	syncs, err := p.publishAll(ctx, nc, js, cl, run+"-sync", c.users, c.inFlight, func(k int) publisher.Job {
		body, _ := json.Marshal(benchUser())
		return publisher.Job{Subject: partition.CommandSubject(string(passkey.OpSync), UserID(k)), Body: body}
	})
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	rep.SyncSeconds = time.Since(start).Seconds()
	if syncs.Classes[publisher.ClassDone] != c.users {
		return fmt.Errorf("sync: %v", syncs.Classes)
	}
	fmt.Fprintf(p.Stdout, "created %d users with %d passkeys each in %.1fs\n", c.users, PasskeysPerUser, rep.SyncSeconds)
	return nil
}

// batchRemovals publishes the removals as a batch publisher does, under
// the CPU profile when one was asked for.
func (p *Bench) batchRemovals(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, c benchConfig, run string,
	profile *os.File, removalJob func(int) publisher.Job, rep *benchReport) error {
	if profile != nil {
		if err := pprof.StartCPUProfile(profile); err != nil {
			return err
		}
	}
	var err error
	rep.Batch, err = p.publishAll(ctx, nc, js, cl, run+"-rm", c.removals, c.inFlight, removalJob)
	if profile != nil {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return fmt.Errorf("removals: %w", err)
	}
	printPhase(p.Stdout, "batch removals (async JetStream publishes, Reply-To, Nats-Msg-Id)", rep.Batch)
	return nil
}

// measureCeiling runs the same batch and sequential removals against the
// stand-in (ceiling.go) and states the worker's figures as a share of it.
func (p *Bench) measureCeiling(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, c benchConfig, run string,
	removalJob, sequential func(int) publisher.Job, rep *benchReport) error {
	s, err := startStandIn(ctx, nc, js, command.DefaultRetention, nil)
	if err != nil {
		return err
	}
	defer s.stop()
	onCeiling := func(job func(int) publisher.Job) func(int) publisher.Job {
		return func(k int) publisher.Job {
			j := job(k)
			j.Subject = toCeiling(j.Subject)
			return j
		}
	}
	if c.removals > 0 {
		if rep.CeilingBatch, err = p.publishAll(ctx, nc, js, cl, run+"-ceil", c.removals, c.inFlight, onCeiling(removalJob)); err != nil {
			return err
		}
		rep.RatioToCeiling = rep.Batch.PerSecond / rep.CeilingBatch.PerSecond
		printPhase(p.Stdout, "the transport alone, batch (a stand-in that only replies and acks)", rep.CeilingBatch)
		fmt.Fprintf(p.Stdout, "batch removals reach %.2f of the transport's rate\n", rep.RatioToCeiling)
	}
	if c.removals > 0 && c.tokens == "per-user" {
		if err := p.measureVerifyCeiling(ctx, nc, js, cl, c, run, onCeiling(removalJob), rep); err != nil {
			return err
		}
	}
	if c.sequential > 0 {
		if rep.CeilingSequential, err = p.requestEach(ctx, nc, cl, c.sequential, onCeiling(sequential)); err != nil {
			return err
		}
		rep.P50AboveCeilingMs = rep.Sequential.P50ms - rep.CeilingSequential.P50ms
		printPhase(p.Stdout, "the transport alone, sequential", rep.CeilingSequential)
		fmt.Fprintf(p.Stdout, "sequential p50 is %.2f ms above the transport's\n", rep.P50AboveCeilingMs)
	}
	return nil
}

// measureVerifyCeiling runs the batch removals again against the stand-in
// that verifies each command's token first (one signature check per
// command, on every core, no cache): the ceiling of self-service traffic.
func (p *Bench) measureVerifyCeiling(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, c benchConfig, run string,
	removalJob func(int) publisher.Job, rep *benchReport) error {
	key, ok := c.keys.keys[c.alg]
	if !ok {
		return fmt.Errorf("no %s key to verify with", c.alg)
	}
	s, err := startStandIn(ctx, nc, js, command.DefaultRetention, signatureVerifier(key))
	if err != nil {
		return err
	}
	defer s.stop()
	if rep.VerifyCeilingBatch, err = p.publishAll(ctx, nc, js, cl, run+"-verify", c.removals, c.inFlight, removalJob); err != nil {
		return err
	}
	rep.RatioToVerifyCeiling = rep.Batch.PerSecond / rep.VerifyCeilingBatch.PerSecond
	printPhase(p.Stdout, "the transport plus one signature check per command, on every core", rep.VerifyCeilingBatch)
	fmt.Fprintf(p.Stdout, "batch removals reach %.2f of that rate\n", rep.RatioToVerifyCeiling)
	return nil
}

func benchUser() passkey.SyncRequest {
	req := passkey.SyncRequest{ResourceOwner: "bench-org", Password: true}
	for j := range PasskeysPerUser {
		req.Passkeys = append(req.Passkeys, passkey.Passkey{ID: PasskeyID(j), Name: "Security key " + strconv.Itoa(j), State: passkey.StateReady})
	}
	return req
}

// removal k takes passkey k/users of user k%users, so that consecutive
// removals touch different users, as an incident's revocation list would.
func removal(users, k int) (string, []byte) {
	body, _ := json.Marshal(passkey.RemoveRequest{TokenID: PasskeyID(k / users)})
	return partition.CommandSubject(string(passkey.OpRemove), UserID(k%users)), body
}

// publishAll publishes n commands to the stream as a batch publisher does
// (PublishJobs: async, Reply-To, Nats-Msg-Id, at most inFlight unanswered)
// and measures each from publish to reply.
func (p *Bench) publishAll(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cl *publisher.Client, run string, n, inFlight int,
	job func(k int) publisher.Job) (*phaseReport, error) {
	jobs := make([]publisher.Job, n)
	for k := range jobs {
		jobs[k] = job(k)
		jobs[k].Line = k
	}
	start := time.Now()
	results := p.PublishJobs(ctx, nc, js, cl, run, jobs, inFlight, progress.None{})
	elapsed := time.Since(start)
	lat := make([]time.Duration, 0, n)
	classes := map[string]int{}
	why := ""
	for _, r := range results {
		classes[r.Class]++
		lat = append(lat, r.Latency)
		if r.Class == publisher.ClassUnanswered && why == "" {
			why = r.Error
		}
	}
	if u := classes[publisher.ClassUnanswered]; u > 0 {
		return nil, fmt.Errorf("%d of %d commands unanswered (the first: %s)", u, n, why)
	}
	return summarize(lat, elapsed, classes), nil
}

// requestEach sends n requests one after another, as one client waiting
// for each reply does.
func (p *Bench) requestEach(ctx context.Context, nc *nats.Conn, cl *publisher.Client, n int, job func(k int) publisher.Job) (*phaseReport, error) {
	lat := make([]time.Duration, n)
	classes := map[string]int{}
	start := time.Now()
	for i := range n {
		j := job(i)
		jc := *cl
		if j.Bearer != "" {
			jc.Bearer = j.Bearer
		}
		t0 := time.Now()
		reply, err := p.Request(ctx, nc, &jc, j.Subject, j.Body, nil)
		if err != nil {
			return nil, err
		}
		lat[i] = time.Since(t0)
		classes[publisher.Classify(reply)]++
	}
	return summarize(lat, time.Since(start), classes), nil
}

func summarize(lat []time.Duration, elapsed time.Duration, classes map[string]int) *phaseReport {
	slices.Sort(lat)
	at := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))]) / 1e6
	}
	return &phaseReport{
		Count: len(lat), Seconds: elapsed.Seconds(), PerSecond: float64(len(lat)) / elapsed.Seconds(),
		P50ms: at(0.50), P90ms: at(0.90), P99ms: at(0.99), MaxMs: float64(lat[len(lat)-1]) / 1e6, Classes: classes,
	}
}

func printPhase(w io.Writer, name string, r *phaseReport) {
	fmt.Fprintf(w, "%s: %d in %.2fs = %.0f/s; latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms; outcomes %v\n",
		name, r.Count, r.Seconds, r.PerSecond, r.P50ms, r.P90ms, r.P99ms, r.MaxMs, r.Classes)
}

// storageRate measures the storage layer alone: the same removals, batch
// per transaction, on a fresh store of the same number of users.
func storageRate(users, removals, batch int) (float64, error) {
	dir, err := os.MkdirTemp("", "passkeys-bench-storage-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	s, err := storage.Open(filepath.Join(dir, "passkeys.db"), storage.Options{})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	if err := SeedUsers(s, users); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := RemoveBatched(s, users, 0, removals, batch); err != nil {
		return 0, err
	}
	return float64(removals) / time.Since(start).Seconds(), nil
}

// startEmbeddedWorker runs a worker in this process, embedded NATS on a
// free loopback port, and returns how to stop it and where NATS is.
func startEmbeddedWorker(ctx context.Context, c benchConfig, stderr io.Writer) (func(), string, error) {
	log, err := app.NewLogger(stderr, app.LogJSON, "warn", "passkeys-worker")
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithCancel(ctx)
	started := make(chan string, 1)
	done := make(chan error, 1)
	cfg := app.Config{
		Listen: "127.0.0.1:0", DataDir: c.dataDir,
		Settings: topology.Settings{Retention: command.DefaultRetention, DuplicateWindow: 2 * time.Minute, Partitions: c.partitions},
		Options:  runner.Options{MaxBatch: c.maxBatch, StoreNoSync: c.storeNoSync}, CreateStream: true, OutcomeWait: 10 * time.Second,
		JWKS: c.keys.jwksPath, Issuer: benchIssuer, Audience: benchAudience, Verify: c.verify,
		Started: func(url string) { started <- url },
	}
	go func() { done <- app.Run(ctx, cfg, log) }()
	select {
	case url := <-started:
		return func() { cancel(); <-done }, url, nil
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("the worker stopped at start")
		}
		return nil, "", err
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// peakRSSMB is this process's peak resident set (VmHWM), in MB; 0 where
// /proc does not tell.
func peakRSSMB() float64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err == nil {
				return float64(kb) / 1024
			}
		}
	}
	return 0
}
