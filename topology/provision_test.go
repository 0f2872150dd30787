package topology_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/topology"
)

// A lease bucket that exists keeps its TTL when provisioning runs again
// (the running workers hold their leases by it), and both Provision and
// Find tell the bucket's TTL, not this build's.
func TestLeaseTTLIsTheBuckets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js, err := jetstream.New(testenv.Connect(t, testenv.StartNATS(t).ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	s := testenv.Settings(2)
	bc := s.LeaseBucketConfig()
	bc.TTL = topology.LeaseTTL + 3*time.Second // made by a build with another TTL
	if _, err := js.CreateKeyValue(ctx, bc); err != nil {
		t.Fatal(err)
	}
	h, err := topology.Provision(ctx, js, s, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if h.LeaseTTL != bc.TTL {
		t.Errorf("Provision: LeaseTTL %v, want the bucket's %v", h.LeaseTTL, bc.TTL)
	}
	st, err := h.Leases.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != bc.TTL {
		t.Errorf("the bucket's TTL became %v after provisioning, want %v kept", st.TTL(), bc.TTL)
	}
	found, err := topology.Find(ctx, js, s, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if found.LeaseTTL != bc.TTL {
		t.Errorf("Find: LeaseTTL %v, want the bucket's %v", found.LeaseTTL, bc.TTL)
	}
}
