package auth

import (
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

// Token is one command's token for VerifyBatch: its Authorization header
// values, the time it is judged at and the key set that judges it.
type Token struct {
	Authorization []string
	At            time.Time
	Keys          *KeySet
}

// Verified holds the claims of the tokens whose signatures VerifyBatch
// found good, for VerifyWith.
type Verified map[[sha256.Size]byte]Claims

// minBatch is the fewest signatures by one key worth a batch check: below
// it each is checked alone.
const minBatch = 4

// VerifyBatch checks the signatures of many EdDSA tokens under RuleZIP215
// at once (one multi-scalar multiplication per key and batch) and returns
// the claims of those whose signatures hold. It decides no verdict:
// VerifyWith judges every token, taking a signature found here as checked.
// Under ZIP 215 a batch accepts exactly the signatures a check alone
// accepts (a false one passes with probability 2^-128 at most), so which
// tokens a worker batches changes no verdict.
//
// Only tokens of a set under RuleZIP215 come here, each once: EdDSA, a
// kid that names one Ed25519 key of the set, canonical (checkZIP215Token),
// not cached already, not expired at its time. A batch that fails is
// split in halves once (verifyHalves); what still fails is left to the
// single check.
func (v *Verifier) VerifyBatch(tokens []Token) Verified {
	out := Verified{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Each goroutine reads and checks a share of the tokens: the reading
	// (base64, JSON) costs about as much as the batch's arithmetic.
	workers := max(1, min(runtime.GOMAXPROCS(0), len(tokens)/(4*minBatch)))
	per := (len(tokens) + workers - 1) / workers
	for start := 0; start < len(tokens); start += per {
		chunk := tokens[start:min(start+per, len(tokens))]
		wg.Go(func() {
			defer func() {
				// A panic leaves these tokens to the single check, which
				// has its own recover.
				_ = recover()
			}()
			for _, g := range v.batchable(chunk) {
				good := verifyHalves(g.pub, g.sigs, nil, 1)
				mu.Lock()
				for _, s := range good {
					out[s.cacheKey] = s.claims
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// signed is one token's signature, ready for a batch.
type signed struct {
	input, sig []byte
	claims     Claims
	cacheKey   [sha256.Size]byte
}

// group is the signatures of one key.
type group struct {
	pub  *edwards25519.Point
	sigs []signed
}

// batchable groups by key the tokens VerifyBatch takes.
func (v *Verifier) batchable(tokens []Token) map[string]*group {
	groups := map[string]*group{}
	seen := map[[sha256.Size]byte]bool{}
	for _, t := range tokens {
		if t.Keys == nil || t.Keys.Rule != RuleZIP215 {
			continue
		}
		raw, err := bearer(t.Authorization)
		if err != nil {
			continue
		}
		key := tokenKey(t.Keys, raw)
		if seen[key] {
			continue
		}
		seen[key] = true
		if _, ok := v.cache.get(key); ok {
			continue
		}
		pub, s, ok := batchEntry(raw, t)
		if !ok {
			continue
		}
		s.cacheKey = key
		g := groups[string(pub)]
		if g == nil {
			A, err := new(edwards25519.Point).SetBytes(pub)
			if err != nil {
				continue
			}
			g = &group{pub: A}
			groups[string(pub)] = g
		}
		g.sigs = append(g.sigs, s)
	}
	for k, g := range groups {
		if len(g.sigs) < minBatch {
			delete(groups, k)
		}
	}
	return groups
}

// batchEntry reads raw for a batch: the key it names and its signature;
// false for a token the batch leaves to the single check.
func batchEntry(raw string, t Token) (ed25519.PublicKey, signed, bool) {
	if alg, err := headerAlgorithm(raw); err != nil || alg != jose.EdDSA {
		return nil, signed{}, false
	}
	jws, err := jose.ParseSignedCompact(raw, allowedAlgorithms)
	if err != nil || len(jws.Signatures) != 1 || checkZIP215Token(raw, jws, jose.EdDSA) != nil {
		return nil, signed{}, false
	}
	kid := jws.Signatures[0].Header.KeyID
	var pub ed25519.PublicKey
	for _, k := range t.Keys.Keys.Keys {
		if kid == "" || k.KeyID != kid || (k.Algorithm != "" && k.Algorithm != string(jose.EdDSA)) {
			continue
		}
		p, ok := k.Key.(ed25519.PublicKey)
		if !ok || pub != nil {
			return nil, signed{}, false // not Ed25519, or two keys of that kid
		}
		pub = p
	}
	sig := jws.Signatures[0].Signature
	if pub == nil || len(sig) != ed25519.SignatureSize {
		return nil, signed{}, false
	}
	var c Claims
	if josejson.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c) != nil ||
		c.Expiry == nil || c.Expiry.Time().Add(Leeway).Before(t.At) {
		return nil, signed{}, false // bad claims or expired: the single check says so
	}
	return pub, signed{input: []byte(raw[:strings.LastIndexByte(raw, '.')]), sig: sig, claims: c}, true
}

// verifyHalves returns the signatures of sigs that hold under A, checked
// in batches: a batch that fails is checked again as two halves, splits
// times at most (one: a stray bad signature costs half a batch more; a
// flood of forged ones, which anyone can make with a key's public kid,
// costs at most twice the batch before each is checked alone).
func verifyHalves(A *edwards25519.Point, sigs, good []signed, splits int) []signed {
	if len(sigs) < minBatch {
		return good
	}
	if batchVerify(A, sigs) {
		return append(good, sigs...)
	}
	if len(sigs) < 2*minBatch || splits == 0 {
		return good
	}
	good = verifyHalves(A, sigs[:len(sigs)/2], good, splits-1)
	return verifyHalves(A, sigs[len(sigs)/2:], good, splits-1)
}

// batchVerify reports whether every signature of sigs holds under A by ZIP
// 215: [8]([Σ z_i s_i]B − Σ [z_i]R_i − [Σ z_i k_i]A) = 0 for random
// 128-bit z_i, k_i = SHA-512(R_i || A || M_i) over the encodings as sent,
// R_i decoded as ed25519consensus decodes it (non-canonical encodings
// accepted), s_i canonical. Each signature that holds alone satisfies its
// own cofactored equation, so the sum holds: a batch never refuses good
// signatures.
func batchVerify(A *edwards25519.Point, sigs []signed) bool {
	pub := A.Bytes() // the key's canonical encoding, as the set holds it (checkZIP215Key)
	scalars := make([]*edwards25519.Scalar, 0, len(sigs)+1)
	points := make([]*edwards25519.Point, 0, len(sigs)+1)
	sumS, sumZK := edwards25519.NewScalar(), edwards25519.NewScalar()
	var zb, digest [64]byte
	for _, s := range sigs {
		R, err := new(edwards25519.Point).SetBytes(s.sig[:32])
		if err != nil {
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
		k, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(digest[:0])) // 64 bytes: cannot fail
		if _, err := rand.Read(zb[:16]); err != nil {
			return false
		}
		z, _ := edwards25519.NewScalar().SetUniformBytes(zb[:]) // the top 48 bytes zero: a 128-bit z
		sumS.MultiplyAdd(z, S, sumS)
		sumZK.MultiplyAdd(z, k, sumZK)
		scalars = append(scalars, z)
		points = append(points, R)
	}
	scalars = append(scalars, sumZK)
	points = append(points, A)
	check := new(edwards25519.Point).ScalarBaseMult(sumS)
	check.Subtract(check, new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points))
	return check.MultByCofactor(check).Equal(edwards25519.NewIdentityPoint()) == 1
}
