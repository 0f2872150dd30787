package storage

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/passkeys/worker/passkey"
)

// Records are stored in a compact binary form: a version byte, then fields
// in a fixed order, strings and lists prefixed by their uvarint length,
// times as Unix nanoseconds (varint). It is several times cheaper than JSON
// to read and write and keeps the file (and so the worker's resident set)
// small. A new version byte marks any future change of layout.
const (
	userRecordV1    byte = 1
	outcomeRecordV1 byte = 1
)

// errCorrupt reports a record that does not decode: a damaged file, never
// a caller's mistake.
var errCorrupt = errors.New("storage: corrupt record")

const (
	flagPassword byte = 1 << iota
	flagOTP
)

const (
	stateReady    byte = 1
	stateNotReady byte = 2
)

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

func encodeUser(u *passkey.User) []byte {
	b := make([]byte, 0, 64+len(u.ID)+len(u.ResourceOwner)+48*len(u.Passkeys))
	b = append(b, userRecordV1)
	b = appendString(b, u.ID)
	b = appendString(b, u.ResourceOwner)
	b = binary.AppendUvarint(b, u.Sequence)
	b = binary.AppendVarint(b, u.CreationDate.UnixNano())
	b = binary.AppendVarint(b, u.ChangeDate.UnixNano())
	var flags byte
	if u.Password {
		flags |= flagPassword
	}
	if u.OTP {
		flags |= flagOTP
	}
	b = append(b, flags)
	b = appendStrings(b, u.IDPLinks)
	b = binary.AppendUvarint(b, uint64(len(u.Passkeys)))
	for _, pk := range u.Passkeys {
		b = appendString(b, pk.ID)
		b = appendString(b, pk.Name)
		state := stateNotReady
		if pk.State == passkey.StateReady {
			state = stateReady
		}
		b = append(b, state)
	}
	return appendStrings(b, u.U2F)
}

func decodeUser(raw []byte) (*passkey.User, error) {
	r := reader{b: raw}
	if r.byte() != userRecordV1 {
		return nil, errCorrupt
	}
	u := &passkey.User{ID: r.string(), ResourceOwner: r.string(), Sequence: r.uvarint()}
	u.CreationDate = r.time()
	u.ChangeDate = r.time()
	flags := r.byte()
	u.Password, u.OTP = flags&flagPassword != 0, flags&flagOTP != 0
	u.IDPLinks = r.strings()
	if n := r.count(); n > 0 {
		u.Passkeys = make([]passkey.Passkey, n)
		for i := range u.Passkeys {
			pk := &u.Passkeys[i]
			pk.ID, pk.Name = r.string(), r.string()
			switch r.byte() {
			case stateReady:
				pk.State = passkey.StateReady
			case stateNotReady:
				pk.State = passkey.StateNotReady
			default:
				r.err = errCorrupt
			}
		}
	}
	u.U2F = r.strings()
	if err := r.done(); err != nil {
		return nil, err
	}
	return u, nil
}

func encodeOutcome(o *Outcome) []byte {
	b := make([]byte, 0, 24+len(o.Subject)+len(o.ErrorCode)+len(o.ErrorText)+len(o.Body))
	b = append(b, outcomeRecordV1)
	b = binary.AppendVarint(b, o.Expires.UnixNano())
	b = appendString(b, o.Subject)
	b = appendString(b, o.ErrorCode)
	b = appendString(b, o.ErrorText)
	return append(b, o.Body...)
}

func decodeOutcome(raw []byte) (*Outcome, error) {
	r := reader{b: raw}
	if r.byte() != outcomeRecordV1 {
		return nil, errCorrupt
	}
	o := &Outcome{Expires: r.time(), Subject: r.string(), ErrorCode: r.string(), ErrorText: r.string()}
	if r.err != nil {
		return nil, r.err
	}
	o.Body = append([]byte(nil), r.b...) // the rest; copied out of the transaction
	return o, nil
}

// reader decodes fields in order; the first failure sticks, and every later
// read returns a zero value, so decoders check once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errCorrupt
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) time() time.Time {
	if r.err != nil {
		return time.Time{}
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return time.Time{}
	}
	r.b = r.b[n:]
	return time.Unix(0, v).UTC()
}

// count reads a list length, refusing one longer than the bytes left could
// hold, so a corrupt length cannot make a huge allocation.
func (r *reader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = errCorrupt
		return 0
	}
	return int(n)
}

func (r *reader) string() string {
	n := r.count()
	if r.err != nil {
		return ""
	}
	s := string(r.b[:n]) // a copy: safe after the transaction ends
	r.b = r.b[n:]
	return s
}

func (r *reader) strings() []string {
	n := r.count()
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = r.string()
	}
	return ss
}

func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = errCorrupt
	}
	return r.err
}
