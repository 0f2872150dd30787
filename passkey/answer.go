package passkey

import "time"

// Answer is what a command got: the details of the change it made, or the
// refusal. It is what an outcome keeps (package storage writes it), and
// what a reply is rendered from (package reply writes ZITADEL's shapes):
// a repeat's reply is the first one's, byte for byte, because both are a
// function of the same Answer.
type Answer struct {
	// Err is the refusal; nil for a success.
	Err *Error
	// Details of a success: the user's sequence, creation and change dates
	// and organisation after the change.
	Sequence      uint64
	CreationDate  time.Time
	ChangeDate    time.Time
	ResourceOwner string
}

// Changed is the Answer of a change that left the user as u.
func Changed(u *User) Answer {
	return Answer{Sequence: u.Sequence, CreationDate: u.CreationDate, ChangeDate: u.ChangeDate, ResourceOwner: u.ResourceOwner}
}

// Refused is the Answer of a refusal.
func Refused(e *Error) Answer { return Answer{Err: e} }
