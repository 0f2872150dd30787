package passkey

import "testing"

var (
	benchSyncBody   = []byte(`{"resourceOwner":"69629023906488334","password":true,"idpLinks":["google-oidc"],"passkeys":[{"id":"pk-1","name":"YubiKey 5","state":"ready"},{"id":"pk-2","name":"Phone","state":"ready"},{"id":"pk-3","name":"Laptop","state":"ready"}],"u2f":["u2f-1"],"otp":true}`)
	benchRemoveBody = []byte(`{"tokenId":"pk-1","force":false}`)
)

// The decoders run for every command, before its transaction: these show
// what strict JSON (exact keys, each once) costs on top of encoding/json.
func BenchmarkDecodeSync(b *testing.B) {
	for b.Loop() {
		if _, err := DecodeSync(benchSyncBody); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRemove(b *testing.B) {
	for b.Loop() {
		if _, err := DecodeRemove(benchRemoveBody); err != nil {
			b.Fatal(err)
		}
	}
}
