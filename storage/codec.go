package storage

import (
	"encoding/binary"
	"time"

	"github.com/passkeys/worker/internal/binrec"
	"github.com/passkeys/worker/passkey"
)

// Records are stored in a compact binary form (package binrec): a version
// byte, then the fields in a fixed order. It is several times cheaper than
// JSON to read and write and keeps the file, and so the pages the worker
// touches, small. A new version byte marks any future change of layout.
const (
	userRecordV1    byte = 1
	outcomeRecordV1 byte = 1
	// outcomeRecordV2 adds the command's fingerprint after the subject.
	outcomeRecordV2 byte = 2
)

const (
	flagPassword byte = 1 << iota
	flagOTP
)

const (
	stateReady    byte = 1
	stateNotReady byte = 2
)

func encodeUser(u *passkey.User) []byte {
	b := make([]byte, 0, 64+len(u.ID)+len(u.ResourceOwner)+48*len(u.Passkeys))
	b = append(b, userRecordV1)
	b = binrec.AppendString(b, u.ID)
	b = binrec.AppendString(b, u.ResourceOwner)
	b = binary.AppendUvarint(b, u.Sequence)
	b = binrec.AppendTime(b, u.CreationDate)
	b = binrec.AppendTime(b, u.ChangeDate)
	var flags byte
	if u.Password {
		flags |= flagPassword
	}
	if u.OTP {
		flags |= flagOTP
	}
	b = append(b, flags)
	b = binrec.AppendStrings(b, u.IDPLinks)
	b = binary.AppendUvarint(b, uint64(len(u.Passkeys)))
	for _, pk := range u.Passkeys {
		b = binrec.AppendString(b, pk.ID)
		b = binrec.AppendString(b, pk.Name)
		state := stateNotReady
		if pk.State == passkey.StateReady {
			state = stateReady
		}
		b = append(b, state)
	}
	return binrec.AppendStrings(b, u.U2F)
}

func decodeUser(raw []byte) (*passkey.User, error) {
	r := binrec.NewReader(raw)
	if r.Byte() != userRecordV1 {
		return nil, binrec.ErrCorrupt
	}
	u := &passkey.User{ID: r.String(), ResourceOwner: r.String(), Sequence: r.Uvarint()}
	u.CreationDate = r.Time()
	u.ChangeDate = r.Time()
	flags := r.Byte()
	u.Password, u.OTP = flags&flagPassword != 0, flags&flagOTP != 0
	u.IDPLinks = r.Strings()
	if n := r.Count(); n > 0 {
		u.Passkeys = make([]passkey.Passkey, n)
		for i := range u.Passkeys {
			pk := &u.Passkeys[i]
			pk.ID, pk.Name = r.String(), r.String()
			switch r.Byte() {
			case stateReady:
				pk.State = passkey.StateReady
			case stateNotReady:
				pk.State = passkey.StateNotReady
			default:
				r.Fail()
			}
		}
	}
	u.U2F = r.Strings()
	if err := r.Done(); err != nil {
		return nil, err
	}
	return u, nil
}

func encodeOutcome(o *Outcome) []byte {
	b := make([]byte, 0, 64+len(o.Subject)+len(o.Fingerprint))
	b = append(b, outcomeRecordV2)
	b = binrec.AppendTime(b, o.Expires)
	b = binrec.AppendString(b, o.Subject)
	b = binrec.AppendString(b, string(o.Fingerprint))
	return appendAnswer(b, o.Answer)
}

// Kinds of answer record, the tail of an outcome record. Repeats must be
// byte-identical for the outcome retention, so these bytes never change
// meaning: a change of either shape needs a new kind, and the old kinds
// keep decoding as they do.
const (
	answerSuccessV1 byte = 1
	answerErrorV1   byte = 2
)

func appendAnswer(b []byte, a passkey.Answer) []byte {
	if a.Err != nil {
		b = append(b, answerErrorV1, byte(a.Err.Code))
		b = binrec.AppendString(b, a.Err.ID)
		return binrec.AppendString(b, a.Err.Message)
	}
	b = binary.AppendUvarint(append(b, answerSuccessV1), a.Sequence)
	b = binrec.AppendTime(b, a.CreationDate)
	b = binrec.AppendTime(b, a.ChangeDate)
	return binrec.AppendString(b, a.ResourceOwner)
}

// readAnswer reads an answer record.
func readAnswer(r *binrec.Reader) passkey.Answer {
	switch r.Byte() {
	case answerSuccessV1:
		return passkey.Answer{Sequence: r.Uvarint(), CreationDate: r.Time(), ChangeDate: r.Time(), ResourceOwner: r.String()}
	case answerErrorV1:
		return passkey.Answer{Err: &passkey.Error{Code: passkey.Code(r.Byte()), ID: r.String(), Message: r.String()}}
	}
	r.Fail()
	return passkey.Answer{}
}

// outcomeExpired tells whether the encoded outcome raw expired at or before
// now, reading only its head. A record it cannot read is not expired: it is
// left for an operator to look at.
func outcomeExpired(raw []byte, now time.Time) bool {
	r := binrec.NewReader(raw)
	if v := r.Byte(); v != outcomeRecordV1 && v != outcomeRecordV2 {
		return false
	}
	at := r.Time()
	return r.Err() == nil && !at.After(now)
}

func decodeOutcome(raw []byte) (*Outcome, error) {
	r := binrec.NewReader(raw)
	v := r.Byte()
	if v != outcomeRecordV1 && v != outcomeRecordV2 {
		return nil, binrec.ErrCorrupt
	}
	o := &Outcome{Expires: r.Time(), Subject: r.String()}
	if v == outcomeRecordV2 {
		if fp := r.String(); fp != "" {
			o.Fingerprint = []byte(fp)
		}
	}
	o.Answer = readAnswer(r)
	if err := r.Done(); err != nil {
		return nil, err
	}
	return o, nil
}
