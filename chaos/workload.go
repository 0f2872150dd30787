package chaos

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/client"
)

// The campaign's token issuer and audience, and its users' organisation.
const (
	issuer   = "https://chaos.passkeys.test"
	audience = "passkeys-chaos"
	org      = "org1"
)

// callTimeout bounds one call, its retries included: the contract's 30 s
// for a failover.
const callTimeout = 30 * time.Second

// user is one of the campaign's users. Half have a password; the others
// have only their passkeys, so that their last one is refused
// (PASSKEY-LAST). Every sync gives the user a new generation of passkeys,
// with ids never used before, so that a removed id never comes back.
type user struct {
	id       string
	password bool
	token    atomic.Pointer[string] // of the signing key in use (workload.rotate)
	gen      atomic.Int64           // the newest generation a sync was asked for

	mu   sync.Mutex
	seen []string // the passkeys the last answer showed the user to have
}

// pick is a passkey to remove: mostly one the user was last seen to have,
// else one of its newest generation or the one before (which may be gone:
// PASSKEY-NOT-FOUND).
func (u *user) pick(rng *mrand.Rand) string {
	u.mu.Lock()
	seen := slices.Clone(u.seen)
	u.mu.Unlock()
	if len(seen) > 0 && rng.IntN(4) != 0 {
		return seen[rng.IntN(len(seen))]
	}
	gen := u.gen.Load() - int64(rng.IntN(2))
	return u.passkeys(max(gen, 0))[rng.IntN(4)]
}

// saw notes what an answer showed of the user's passkeys.
func (u *user) saw(op *Op) {
	if op.Result.Status != StatusOK {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	switch op.Kind {
	case OpList:
		u.seen = slices.Clone(op.Result.Passkeys)
	case OpSync:
		u.seen = slices.Clone(op.Set)
	case OpRemove:
		u.seen = slices.DeleteFunc(u.seen, func(id string) bool { return id == op.PK })
	}
}

func (u *user) passkeys(gen int64) []string {
	var ids []string
	for k := range 4 {
		ids = append(ids, fmt.Sprintf("%s-g%d-%d", u.id, gen, k))
	}
	return ids
}

// workload is the campaign's clients: removals, lists and syncs over many
// users through the client package, each call recorded in the history.
type workload struct {
	users   []*user
	service *client.Client // self-service removals and lists
	admin   *client.Client // syncs
	hist    *history
	// keys are the campaign's signing keys: the first signs the tokens
	// until the operator's rotation (campaign.rotate), the second after.
	keys       [2]jose.JSONWebKey
	jwksPath   string
	ttl        time.Duration
	adminToken atomic.Pointer[string]
	calls      tokenCalls
	start      time.Time
	seed       uint64
}

// newWorkload makes the signing key (its JWKS at jwksPath), the users and
// their tokens, valid for the campaign's duration and two hours more.
func newWorkload(cfg *Config, jwksPath string, service, admin *nats.Conn, start time.Time) (*workload, error) {
	w := &workload{hist: &history{}, start: start, seed: cfg.Seed, service: client.New(service), admin: client.New(admin),
		jwksPath: jwksPath, ttl: cfg.Duration + 2*time.Hour}
	for i, kid := range []string{"chaos", "chaos-next"} {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		w.keys[i] = jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: "EdDSA", Use: "sig"}
	}
	for i := range cfg.Users {
		w.users = append(w.users, &user{id: "user-" + strconv.Itoa(i), password: i%2 == 0})
	}
	if _, err := w.useKey(w.keys[0]); err != nil {
		return nil, err
	}
	return w, w.writeJWKS(w.keys[0])
}

// writeJWKS writes the public halves of keys as the campaign's JWKS file.
func (w *workload) writeJWKS(keys ...jose.JSONWebKey) error {
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public())
	}
	raw, err := json.Marshal(set)
	if err != nil {
		return err
	}
	return os.WriteFile(w.jwksPath, raw, 0o600)
}

// useKey gives every user and the administrator a token signed with key,
// valid for the campaign's duration and two hours more, and returns the
// users' tokens before.
func (w *workload) useKey(key jose.JSONWebKey) (map[string]string, error) {
	mint := func(sub string, scopes ...string) (*string, error) {
		tok, err := auth.Mint(key, auth.TokenRequest{Subject: sub, Org: org, Scopes: scopes, Issuer: issuer, Audience: audience, TTL: w.ttl})
		return &tok, err
	}
	tok, err := mint("chaos-admin", "passkeys:admin")
	if err != nil {
		return nil, err
	}
	w.adminToken.Store(tok)
	old := map[string]string{}
	for _, u := range w.users {
		if tok, err = mint(u.id); err != nil {
			return nil, err
		}
		if before := u.token.Swap(tok); before != nil {
			old[u.id] = *before
		}
	}
	return old, nil
}

func (w *workload) now() int64 { return int64(time.Since(w.start)) }

// run is client id's loop until ctx ends: a removal, a list or a sync of
// a random user, then a short pause.
func (w *workload) run(ctx context.Context, id int) {
	rng := mrand.New(mrand.NewPCG(w.seed, uint64(id)+1))
	for ctx.Err() == nil {
		u := w.users[rng.IntN(len(w.users))]
		switch r := rng.IntN(100); {
		case r < 55:
			w.remove(id, u, u.pick(rng))
		case r < 92:
			w.list(id, u)
		default:
			w.sync(id, u, u.gen.Add(1))
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(5+rng.IntN(20)) * time.Millisecond):
		}
	}
}

func (w *workload) remove(id int, u *user, pk string) {
	op := &Op{Client: id, Kind: OpRemove, User: u.id, PK: pk, MsgID: newMsgID()}
	w.do(op, u)
	w.hist.add(op)
}

func (w *workload) sync(id int, u *user, gen int64) {
	op := &Op{Client: id, Kind: OpSync, User: u.id, Set: u.passkeys(gen), Password: u.password, MsgID: newMsgID()}
	w.do(op, u)
	w.hist.add(op)
}

func (w *workload) list(id int, u *user) *Op {
	op := &Op{Client: id, Kind: OpList, User: u.id}
	w.do(op, u)
	w.hist.add(op)
	return op
}

// do makes op's call (a first one, or one asked again with its
// Nats-Msg-Id) and fills in its times and result.
func (w *workload) do(op *Op, u *user) {
	defer w.calls.begin()()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var body []byte
	opts := []client.CallOption{client.ReplyBody(&body)}
	if op.MsgID != "" {
		opts = append(opts, client.MsgID(op.MsgID))
	}
	op.Call = w.now()
	var err error
	var seq uint64
	var list []string
	var date time.Time
	switch op.Kind {
	case OpRemove:
		var d client.Details
		d, err = w.service.Remove(ctx, op.User, op.PK, append(opts, client.Token(*u.token.Load()))...)
		seq, date = d.Sequence, d.ChangeDate
	case OpSync:
		snap := client.User{ID: op.User, ResourceOwner: org, Password: op.Password}
		for _, id := range op.Set {
			snap.Passkeys = append(snap.Passkeys, client.Passkey{ID: id, Name: "key " + id, State: client.StateReady})
		}
		var d client.Details
		d, err = w.admin.Sync(ctx, snap, append(opts, client.Token(*w.adminToken.Load()))...)
		seq, date = d.Sequence, d.ChangeDate
	default:
		var l client.List
		l, err = w.service.List(ctx, op.User, client.Token(*u.token.Load()))
		seq, date = l.ProcessedSequence, l.Timestamp
		for _, pk := range l.Passkeys {
			list = append(list, pk.ID)
		}
		slices.Sort(list)
	}
	op.Return = w.now()
	op.Result = resultOf(err, body, seq, list)
	if op.Result.Status == StatusOK && seq > 0 {
		op.Result.Date = date.UTC().Format(time.RFC3339Nano)
	}
	u.saw(op)
}

// tokenCalls counts the calls under way by the generation of the tokens
// they may carry: before the rotation's new tokens (useKey), and after.
type tokenCalls struct {
	gen atomic.Int64
	n   [2]atomic.Int64
}

// begin counts a call, before it loads its token, until end is called.
func (t *tokenCalls) begin() (end func()) {
	for {
		g := t.gen.Load()
		t.n[g&1].Add(1)
		if t.gen.Load() == g {
			return func() { t.n[g&1].Add(-1) }
		}
		t.n[g&1].Add(-1)
	}
}

// next starts the next generation (after the tokens were swapped) and
// waits until every call of the one before has ended; false when ctx
// ends first.
func (t *tokenCalls) next(ctx context.Context) bool {
	g := t.gen.Add(1) - 1
	for t.n[g&1].Load() > 0 {
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return false
		}
	}
	return true
}

// resultOf classifies a call's answer.
func resultOf(err error, body []byte, seq uint64, list []string) Result {
	var e *client.Error
	switch {
	case err == nil:
		return Result{Status: StatusOK, Seq: seq, Passkeys: list, Body: body}
	case errors.Is(err, client.ErrBadReply):
		return Result{Status: StatusRefused, ErrID: badReply, Body: body, Err: err.Error()}
	case errors.Is(err, client.ErrOutcomeUnknown) || !errors.As(err, &e) || e.Unavailable():
		return Result{Status: StatusUnknown, Err: err.Error()}
	}
	return Result{Status: StatusRefused, ErrID: e.ID, Body: body}
}

// badReply is the id the campaign gives a reply that breaks the wire
// contract (client.ErrBadReply): an anomaly.
const badReply = "CHAOS-BAD-REPLY"

// newMsgID is a Nats-Msg-Id of the campaign's own: 64 random bits.
func newMsgID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("chaos-%x", b)
}
