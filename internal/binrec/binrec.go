// Package binrec writes and reads the compact binary records the store
// keeps: fields in a fixed order, strings prefixed by their uvarint length,
// times as Unix nanoseconds (varint).
package binrec

import (
	"encoding/binary"
	"errors"
	"time"
)

// ErrCorrupt reports a record that does not decode: a damaged file, never
// a caller's mistake.
var ErrCorrupt = errors.New("corrupt record")

// AppendString appends s with its length.
func AppendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// AppendStrings appends the count of ss, then each string.
func AppendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = AppendString(b, s)
	}
	return b
}

// AppendTime appends t as Unix nanoseconds.
func AppendTime(b []byte, t time.Time) []byte { return binary.AppendVarint(b, t.UnixNano()) }

// Reader decodes fields in order. The first failure sticks and every later
// read returns a zero value, so a decoder checks Err (or Done) once at the end.
type Reader struct {
	b   []byte
	err error
}

// NewReader reads b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Err is the first failure, if any.
func (r *Reader) Err() error { return r.err }

// Fail marks the record corrupt, for a value the caller finds out of range.
func (r *Reader) Fail() { r.err = ErrCorrupt }

// Rest returns a copy of the bytes not read yet, and consumes them.
func (r *Reader) Rest() []byte {
	rest := append([]byte(nil), r.b...)
	r.b = nil
	return rest
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = ErrCorrupt
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = ErrCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Time reads a time written by AppendTime, in UTC.
func (r *Reader) Time() time.Time {
	if r.err != nil {
		return time.Time{}
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = ErrCorrupt
		return time.Time{}
	}
	r.b = r.b[n:]
	return time.Unix(0, v).UTC()
}

// Count reads a length, refusing one longer than the bytes left could
// hold, so a corrupt length cannot make a huge allocation.
func (r *Reader) Count() int {
	n := r.Uvarint()
	if n > uint64(len(r.b)) {
		r.err = ErrCorrupt
		return 0
	}
	return int(n)
}

// String reads a string; it is a copy, safe after the transaction ends.
func (r *Reader) String() string {
	n := r.Count()
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

// Strings reads a list written by AppendStrings; nil when empty.
func (r *Reader) Strings() []string {
	n := r.Count()
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = r.String()
	}
	return ss
}

// Done is Err, or ErrCorrupt when bytes are left over.
func (r *Reader) Done() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = ErrCorrupt
	}
	return r.err
}
