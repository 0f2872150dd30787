package app

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// The repository's cluster.conf is a valid nats-server configuration: a
// clustered node with nats.conf's users and JetStream.
func TestClusterConfigParses(t *testing.T) {
	for _, v := range passwordVars {
		t.Setenv(v, "secret")
	}
	t.Setenv("PASSKEYS_NODE_NAME", "n1")
	for i, port := range []string{"6222", "6223", "6224"} {
		t.Setenv("PASSKEYS_ROUTE_"+string(rune('1'+i)), "nats-route://127.0.0.1:"+port)
	}
	opts, err := server.ProcessConfigFile("../cluster.conf")
	if err != nil {
		t.Fatal(err)
	}
	if opts.ServerName != "n1" || opts.Cluster.Name != "passkeys" || len(opts.Routes) != 3 || !opts.JetStream || len(opts.Users) != 4 ||
		!opts.SyncAlways {
		t.Fatalf("cluster.conf: server %q, cluster %q, %d routes, JetStream %v, %d users, sync always %v",
			opts.ServerName, opts.Cluster.Name, len(opts.Routes), opts.JetStream, len(opts.Users), opts.SyncAlways)
	}
}
