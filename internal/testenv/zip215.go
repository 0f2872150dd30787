package testenv

import (
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base64"
	"strings"
	"testing"

	"filippo.io/edwards25519"
)

// order2 is the point (0, -1), of order 2.
var order2, _ = new(edwards25519.Point).SetBytes([]byte{
	0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})

// Torsion signs tok's header and payload again with the EdDSA test key,
// with a point of order 2 added to the signature's R: a signature that
// ZIP 215's cofactored equation accepts and RFC 8032's cofactorless one
// (Go's crypto/ed25519) refuses. Only the key's holder can make one.
func (k *Keys) Torsion(tb testing.TB, tok string) string {
	tb.Helper()
	priv := k.Private["EdDSA"].Key.(ed25519.PrivateKey)
	input := tok[:strings.LastIndexByte(tok, '.')]
	return input + "." + base64.RawURLEncoding.EncodeToString(SignWithTorsion(priv, []byte(input)))
}

// SignWithTorsion is an Ed25519 signature of msg by priv whose R has a
// point of order 2 added (see Torsion).
func SignWithTorsion(priv ed25519.PrivateKey, msg []byte) []byte {
	h := sha512.Sum512(priv.Seed())
	a, _ := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	rh := sha512.New()
	rh.Write(h[32:])
	rh.Write(msg)
	r, _ := edwards25519.NewScalar().SetUniformBytes(rh.Sum(nil))
	R := new(edwards25519.Point).ScalarBaseMult(r)
	R.Add(R, order2)
	kh := sha512.New()
	kh.Write(R.Bytes())
	kh.Write(priv.Public().(ed25519.PublicKey))
	kh.Write(msg)
	kk, _ := edwards25519.NewScalar().SetUniformBytes(kh.Sum(nil))
	S := edwards25519.NewScalar().MultiplyAdd(kk, a, r)
	return append(R.Bytes(), S.Bytes()...)
}
