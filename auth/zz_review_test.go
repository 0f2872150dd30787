package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/go-jose/go-jose/v4"
)

const zzIss, zzAud = "iss", "aud"

var b64 = base64.RawURLEncoding

func zzClaims(sub string, exp time.Time) string {
	return fmt.Sprintf(`{"sub":%q,"iss":%q,"aud":%q,"exp":%d}`, sub, zzIss, zzAud, exp.Unix())
}

func zzTorsion8(t *testing.T) *edwards25519.Point {
	b, _ := hex.DecodeString("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
	T, err := new(edwards25519.Point).SetBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	q := new(edwards25519.Point).Add(T, T)
	q.Add(q, q)
	if !smallOrder(T) || q.Equal(edwards25519.NewIdentityPoint()) == 1 {
		t.Fatal("not order 8")
	}
	return T
}

// zzSign signs input with scalar a, hashing pubBytes, R = rB + addR.
func zzSign(a *edwards25519.Scalar, pubBytes, input []byte, addR *edwards25519.Point) []byte {
	var rb [64]byte
	rand.Read(rb[:])
	r, _ := edwards25519.NewScalar().SetUniformBytes(rb[:])
	R := new(edwards25519.Point).ScalarBaseMult(r)
	if addR != nil {
		R.Add(R, addR)
	}
	h := sha512.New()
	h.Write(R.Bytes())
	h.Write(pubBytes)
	h.Write(input)
	k, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	s := edwards25519.NewScalar().MultiplyAdd(k, a, r)
	return append(R.Bytes(), s.Bytes()...)
}

func zzKey(t *testing.T) (ed25519.PrivateKey, *edwards25519.Scalar) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := sha512.Sum512(priv.Seed())
	a, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		t.Fatal(err)
	}
	return priv, a
}

func zzVerifier(t *testing.T, pub []byte) *Verifier {
	v, err := NewVerifier(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ed25519.PublicKey(pub), KeyID: "k1", Algorithm: "EdDSA"}}}, zzIss, zzAud)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var zzHeader = b64.EncodeToString([]byte(`{"alg":"EdDSA","kid":"k1"}`))

func zzGood(priv ed25519.PrivateKey, sub string) string {
	in := zzHeader + "." + b64.EncodeToString([]byte(zzClaims(sub, time.Now().Add(time.Hour))))
	return in + "." + b64.EncodeToString(ed25519.Sign(priv, []byte(in)))
}

func zzToks(toks ...string) []Token {
	var out []Token
	for _, s := range toks {
		out = append(out, Token{Authorization: []string{"Bearer " + s}, At: time.Now()})
	}
	return out
}

// compare reports the verdict on odd after Prepare and with a fresh verifier.
func zzCompare(t *testing.T, pub []byte, odd string, others ...string) (batched, fresh error) {
	vb, vf := zzVerifier(t, pub), zzVerifier(t, pub)
	vb.Prepare(zzToks(append([]string{odd}, others...)...))
	_, batched = vb.Verify([]string{"Bearer " + odd}, time.Now())
	_, fresh = vf.Verify([]string{"Bearer " + odd}, time.Now())
	return
}

func TestZZTorsionR(t *testing.T) {
	priv, a := zzKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	in := zzHeader + "." + b64.EncodeToString([]byte(zzClaims("victim", time.Now().Add(time.Hour))))
	odd := in + "." + b64.EncodeToString(zzSign(a, pub, []byte(in), zzTorsion8(t)))
	b, f := zzCompare(t, pub, odd, zzGood(priv, "a"), zzGood(priv, "b"), zzGood(priv, "c"))
	t.Logf("torsion R: after Prepare %v; fresh %v", b, f)
}

func TestZZNonCanonicalInput(t *testing.T) {
	priv, _ := zzKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	hdr := []byte(zzHeader)
	// 26-byte header: last char carries 2 padding bits.
	c := hdr[len(hdr)-1]
	idx := -1
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := range alpha {
		if alpha[i] == c {
			idx = i
		}
	}
	hdr[len(hdr)-1] = alpha[idx|1]
	in := string(hdr) + "." + b64.EncodeToString([]byte(zzClaims("victim", time.Now().Add(time.Hour))))
	odd := in + "." + b64.EncodeToString(ed25519.Sign(priv, []byte(in)))
	b, f := zzCompare(t, pub, odd, zzGood(priv, "a"), zzGood(priv, "b"), zzGood(priv, "c"))
	t.Logf("issuer-signed non-canonical base64: after Prepare %v; fresh %v", b, f)

	// Attacker malleates an honest token: Verify accepts it, batch fails the whole group.
	good := zzGood(priv, "m")
	h := []byte(good)
	h[len(zzHeader)-1] = alpha[idx|1]
	mall := string(h)
	v := zzVerifier(t, pub)
	_, err := v.Verify([]string{"Bearer " + mall}, time.Now())
	t.Logf("malleated honest token, Verify alone: %v", err)
	var others []string
	for i := range 63 {
		others = append(others, zzGood(priv, fmt.Sprint("o", i)))
	}
	v = zzVerifier(t, pub)
	v.Prepare(zzToks(append([]string{mall}, others...)...))
	t.Logf("Prepare of 63 good + 1 malleated: cached %d", v.CachedTokens())
}

func TestZZMixedOrderKey(t *testing.T) {
	priv, a := zzKey(t)
	A := new(edwards25519.Point).ScalarBaseMult(a)
	A.Add(A, zzTorsion8(t))
	pub := A.Bytes()
	mk := func(sub string) string {
		in := zzHeader + "." + b64.EncodeToString([]byte(zzClaims(sub, time.Now().Add(time.Hour))))
		return in + "." + b64.EncodeToString(zzSign(a, pub, []byte(in), nil))
	}
	var toks []string
	for i := range 32 {
		toks = append(toks, mk(fmt.Sprint("u", i)))
	}
	vf, vb := zzVerifier(t, pub), zzVerifier(t, pub)
	vb.Prepare(zzToks(toks...))
	nf, nb := 0, 0
	for _, tok := range toks {
		if _, err := vf.Verify([]string{"Bearer " + tok}, time.Now()); err == nil {
			nf++
		}
		if _, err := vb.Verify([]string{"Bearer " + tok}, time.Now()); err == nil {
			nb++
		}
	}
	_ = priv
	t.Logf("mixed-order key, 32 tokens: fresh accepts %d, after Prepare %d", nf, nb)
}

func TestZZExpiredReplay(t *testing.T) {
	priv, a := zzKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	exp := time.Now().Add(-time.Hour) // token expired by wall clock; command stored while valid
	at := exp.Add(-time.Minute)
	mk := func(sub string, tor bool) string {
		in := zzHeader + "." + b64.EncodeToString([]byte(zzClaims(sub, exp)))
		var T *edwards25519.Point
		if tor {
			T = zzTorsion8(t)
		}
		return in + "." + b64.EncodeToString(zzSign(a, pub, []byte(in), T))
	}
	odd := mk("victim", true)
	toks := []Token{}
	for _, s := range []string{odd, mk("a", false), mk("b", false), mk("c", false)} {
		toks = append(toks, Token{Authorization: []string{"Bearer " + s}, At: at})
	}
	v := zzVerifier(t, pub)
	v.Prepare(toks)
	_, err := v.Verify([]string{"Bearer " + odd}, at)
	t.Logf("replay (token exp past wall clock): cached %d, torsion token %v", v.CachedTokens(), err)
}

func TestZZDupAlg(t *testing.T) {
	for _, h := range []string{
		`{"alg":"ES256","kid":"k1","alg":"EdDSA"}`,
		`{"alg":"EdDSA","kid":"k1","alg":"ES256"}`,
		`{"alg":"ES256","kid":"k1","Alg":"EdDSA"}`,
		`{"alg":"ES256","kid":"k1","al\u0067":"EdDSA"}`,
	} {
		tok := b64.EncodeToString([]byte(h)) + "." + b64.EncodeToString([]byte(`{}`)) + "." + b64.EncodeToString(make([]byte, 64))
		alg, err := headerAlgorithm(tok)
		jws, jerr := jose.ParseSignedCompact(tok, allowedAlgorithms)
		var jalg string
		var extra any
		if jerr == nil {
			jalg, extra = jws.Signatures[0].Protected.Algorithm, jws.Signatures[0].Protected.ExtraHeaders
		}
		t.Logf("%s: headerAlgorithm %q %v; go-jose %q %v extra=%v", h, alg, err, jalg, jerr, extra)
	}
}

func TestZZX5cNonce(t *testing.T) {
	priv, _ := zzKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	hdr := b64.EncodeToString([]byte(`{"alg":"EdDSA","kid":"k1","nonce":"x","jwk":null}`))
	var toks []string
	for i := range 4 {
		in := hdr + "." + b64.EncodeToString([]byte(zzClaims(fmt.Sprint("n", i), time.Now().Add(time.Hour))))
		toks = append(toks, in+"."+b64.EncodeToString(ed25519.Sign(priv, []byte(in))))
	}
	v := zzVerifier(t, pub)
	v.Prepare(zzToks(toks...))
	t.Logf("nonce/jwk:null header: cached %d", v.CachedTokens())
}

func BenchmarkZZ(b *testing.B) {
	priv, _ := zzKey(nil)
	pub := priv.Public().(ed25519.PublicKey)
	var good []string
	for i := range 64 {
		good = append(good, zzGood(priv, fmt.Sprint("g", i)))
	}
	bad := []byte(good[0])
	bad[len(zzHeader)-1] ^= 1 // 'J'<->'K': same decoded header, non-canonical base64
	poisoned := append(append([]string{}, good[1:]...), string(bad))
	if _, err := zzVerifier(nil, pub).Verify([]string{"Bearer " + string(bad)}, time.Now()); err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, toks []string, prep bool) {
		for b.Loop() {
			v := zzVerifier(nil, pub)
			if prep {
				v.Prepare(zzToks(toks...))
			}
			for _, s := range toks {
				v.Verify([]string{"Bearer " + s}, time.Now())
			}
		}
	}
	b.Run("plain", func(b *testing.B) { run(b, good, false) })
	b.Run("prepared", func(b *testing.B) { run(b, good, true) })
	b.Run("poisoned", func(b *testing.B) { run(b, poisoned, true) })
}
