package passkey

import "testing"

// The contract's error table: each gRPC code with the HTTP status
// grpc-gateway gives it, and the name the metrics label it with.
func TestStatus(t *testing.T) {
	for code, want := range map[Code]struct {
		http int
		name string
	}{
		0: {200, "OK"}, CodeInvalidArgument: {400, "INVALID_ARGUMENT"}, CodeUnauthenticated: {401, "UNAUTHENTICATED"},
		CodePermissionDenied: {403, "PERMISSION_DENIED"}, CodeNotFound: {404, "NOT_FOUND"},
		CodeFailedPrecondition: {400, "FAILED_PRECONDITION"}, CodeInternal: {500, "INTERNAL"},
		CodeUnavailable: {503, "UNAVAILABLE"},
	} {
		if http, name := code.Status(); http != want.http || name != want.name {
			t.Errorf("code %d: %d %s, want %d %s", code, http, name, want.http, want.name)
		}
	}
}
