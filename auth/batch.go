package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"runtime"
	"strings"
	"sync"
	"time"

	"filippo.io/edwards25519"
	"github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
)

// Token is a command's Authorization header values and the time its token
// is judged at, for Prepare.
type Token struct {
	Authorization []string
	At            time.Time
}

// minBatch is the fewest signatures by one key worth a batch check: below
// it Verify checks them one by one.
const minBatch = 4

// Prepare checks the signatures of many EdDSA tokens at once (Ed25519 batch
// verification: one multi-scalar multiplication for the whole batch, about
// four times cheaper per signature than checking each, measured with 64
// signatures by one key) and caches the claims of the tokens whose
// signatures hold, so that Verify finds them there. It changes no answer:
// a token it passes over, or whose batch fails (one bad signature fails its
// whole batch), is verified by Verify as before, one by one, so a bad
// signature fails only its own command. Every other check (algorithm,
// issuer, audience, times, claim types) is Verify's, as for a cached token.
//
// Only plain tokens take this path: EdDSA, a kid naming exactly one key of
// the set in force, no header but alg, kid, typ and cty, canonical
// encodings of the signature's R and s. The batch equation is the
// cofactored one, which differs from the cofactorless check of a single
// signature only for a signature made on purpose by the private key's
// holder (the issuer itself): no one else can make a signature that one
// accepts and the other refuses.
func (v *Verifier) Prepare(tokens []Token) {
	if len(tokens) < minBatch {
		return
	}
	workers := min(runtime.GOMAXPROCS(0), len(tokens)/minBatch)
	per := (len(tokens) + workers - 1) / workers
	var wg sync.WaitGroup
	for start := 0; start < len(tokens); start += per {
		chunk := tokens[start:min(start+per, len(tokens))]
		wg.Go(func() { v.prepare(chunk) })
	}
	wg.Wait()
}

// signed is one token's signature, ready for a batch.
type signed struct {
	input, sig, payload []byte
	cacheKey            [sha256.Size]byte
	era                 uint64
}

func (v *Verifier) prepare(tokens []Token) {
	byKey := map[string][]signed{}
	for _, t := range tokens {
		pub, s, ok := v.signedBy(t)
		if ok {
			byKey[string(pub)] = append(byKey[string(pub)], s)
		}
	}
	for pub, group := range byKey {
		if len(group) < minBatch || !batchVerify(ed25519.PublicKey(pub), group) {
			continue
		}
		for _, s := range group {
			var c Claims
			if josejson.Unmarshal(s.payload, &c) != nil {
				continue // Verify answers AUTH-CLAIMS
			}
			v.cacheClaims(s.cacheKey, s.era, c)
		}
	}
}

// signedBy reads t's token for a batch: the key it names and its signature;
// false for a token that is not plain EdDSA (Verify takes it), or is
// cached already.
func (v *Verifier) signedBy(t Token) (ed25519.PublicKey, signed, bool) {
	raw, err := bearer(t.Authorization)
	if err != nil {
		return nil, signed{}, false
	}
	v.mu.RLock()
	inForce, era := v.keysAt(t.At)
	keys := inForce.Keys.Keys
	v.mu.RUnlock()
	cacheKey := tokenCacheKey(era, raw)
	if _, ok := v.cache.get(cacheKey); ok {
		return nil, signed{}, false
	}
	if alg, err := headerAlgorithm(raw); err != nil || alg != jose.EdDSA {
		return nil, signed{}, false
	}
	jws, err := jose.ParseSignedCompact(raw, allowedAlgorithms)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, signed{}, false
	}
	sig := jws.Signatures[0]
	if sig.Protected.JSONWebKey != nil || sig.Protected.KeyID == "" {
		return nil, signed{}, false
	}
	for k := range sig.Protected.ExtraHeaders {
		if k != jose.HeaderType && k != jose.HeaderContentType {
			return nil, signed{}, false // crit, b64 and the like: go-jose judges those
		}
	}
	var pub ed25519.PublicKey
	for _, k := range keys {
		if k.KeyID != sig.Protected.KeyID || (k.Algorithm != "" && k.Algorithm != string(jose.EdDSA)) {
			continue
		}
		p, ok := k.Key.(ed25519.PublicKey)
		if !ok || pub != nil {
			return nil, signed{}, false // not Ed25519, or two keys of that kid
		}
		pub = p
	}
	dot := strings.LastIndexByte(raw, '.')
	if pub == nil || len(pub) != ed25519.PublicKeySize || len(sig.Signature) != ed25519.SignatureSize || dot < 0 {
		return nil, signed{}, false
	}
	return pub, signed{input: []byte(raw[:dot]), sig: sig.Signature, payload: jws.UnsafePayloadWithoutVerification(),
		cacheKey: cacheKey, era: era}, true
}

// batchVerify reports whether every signature of group holds under pub:
// [8]([Σ z_i s_i]B − Σ [z_i]R_i − [Σ z_i k_i]A) = 0 for random 128-bit z_i,
// k_i = SHA-512(R_i || A || M_i). A false signature passes with
// probability 2^-128 at most. A key of small order, or a non-canonical
// encoding of A, R or s, fails the batch (its tokens go one by one).
func batchVerify(pub ed25519.PublicKey, group []signed) bool {
	A, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil || !bytes.Equal(A.Bytes(), pub) || smallOrder(A) {
		return false
	}
	scalars := make([]*edwards25519.Scalar, 0, len(group)+1)
	points := make([]*edwards25519.Point, 0, len(group)+1)
	sumS, sumZK := edwards25519.NewScalar(), edwards25519.NewScalar()
	var zb [64]byte
	for _, s := range group {
		R, err := new(edwards25519.Point).SetBytes(s.sig[:32])
		if err != nil || !bytes.Equal(R.Bytes(), s.sig[:32]) {
			return false
		}
		S, err := edwards25519.NewScalar().SetCanonicalBytes(s.sig[32:])
		if err != nil {
			return false
		}
		h := sha512.New()
		h.Write(s.sig[:32])
		h.Write(pub)
		h.Write(s.input)
		k, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil)) // 64 bytes: cannot fail
		if _, err := rand.Read(zb[:16]); err != nil {
			return false
		}
		z, _ := edwards25519.NewScalar().SetUniformBytes(zb[:]) // 64 bytes, the top 48 zero: a 128-bit z
		sumS.MultiplyAdd(z, S, sumS)
		sumZK.MultiplyAdd(z, k, sumZK)
		scalars = append(scalars, z)
		points = append(points, R)
	}
	scalars = append(scalars, sumZK)
	points = append(points, A)
	check := new(edwards25519.Point).ScalarBaseMult(sumS)
	check.Subtract(check, new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points))
	check.MultByCofactor(check)
	return check.Equal(edwards25519.NewIdentityPoint()) == 1
}

// smallOrder reports whether [8]p is the identity.
func smallOrder(p *edwards25519.Point) bool {
	return new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1
}
