package passkey

import (
	"slices"
	"time"
)

// RemoveRequest is the body of a remove command.
type RemoveRequest struct {
	TokenID string `json:"tokenId"`
	Force   bool   `json:"force"`
}

// SyncRequest is the body of a sync command: the user's whole login-method
// snapshot.
type SyncRequest struct {
	ResourceOwner string    `json:"resourceOwner"`
	Password      bool      `json:"password"`
	IDPLinks      []string  `json:"idpLinks"`
	Passkeys      []Passkey `json:"passkeys"`
	U2F           []string  `json:"u2f"`
	OTP           bool      `json:"otp"`
}

// RemovePasskey decides whether p may remove passkey req.TokenID of user
// userID (stored as u, nil when unknown) and returns the user as it is after
// the removal, its sequence advanced by one and changed at time at. u is not
// modified.
//
// Errors: PERMISSION_DENIED (PERMISSION-USER, PERMISSION-FORCE),
// NOT_FOUND (USER-NOT-FOUND, for a system principal only; PASSKEY-NOT-FOUND),
// FAILED_PRECONDITION (PASSKEY-LAST).
func RemovePasskey(p Principal, userID string, u *User, req RemoveRequest, at time.Time) (*User, error) {
	if !p.mayAskAbout(userID) {
		return nil, ErrDeniedUser
	}
	if req.Force && !p.Admin && !p.System {
		return nil, ErrDeniedForce
	}
	if u == nil {
		return nil, p.unknownUser()
	}
	if !p.mayAct(userID, u) {
		return nil, ErrDeniedUser
	}
	if req.Force && !p.administers(u.ResourceOwner) {
		return nil, ErrDeniedForce
	}
	i := slices.IndexFunc(u.Passkeys, func(pk Passkey) bool { return pk.ID == req.TokenID })
	if i < 0 {
		return nil, ErrPasskeyNotFound
	}
	next := u.clone()
	next.Passkeys = slices.Delete(next.Passkeys, i, i+1)
	if !req.Force && u.Passkeys[i].State == StateReady && next.FirstFactors() == 0 {
		return nil, ErrPasskeyLast
	}
	next.Sequence++
	next.ChangeDate = at
	return next, nil
}

// SyncUser decides whether p may set the login-method snapshot of user userID
// (stored as u, nil when unknown) and returns the user as it is afterwards:
// created with sequence 1 when new, its sequence advanced by one otherwise.
// req must have passed ValidateSync.
//
// Errors: PERMISSION_DENIED (PERMISSION-SYNC, PERMISSION-USER),
// FAILED_PRECONDITION (USER-RESOURCEOWNER-IMMUTABLE).
func SyncUser(p Principal, userID string, u *User, req SyncRequest, at time.Time) (*User, error) {
	// The body's organisation is judged before the stored user is looked
	// at, so a refusal does not tell whether the user exists elsewhere.
	if !p.administers(req.ResourceOwner) {
		return nil, ErrDeniedSync
	}
	next := &User{ID: userID, ResourceOwner: req.ResourceOwner, Sequence: 1, CreationDate: at}
	if u != nil {
		if !p.administers(u.ResourceOwner) {
			return nil, ErrDeniedUser
		}
		if req.ResourceOwner != u.ResourceOwner {
			return nil, ErrOwnerImmutable
		}
		next.Sequence = u.Sequence + 1
		next.CreationDate = u.CreationDate
	}
	next.ChangeDate = at
	next.Password = req.Password
	next.IDPLinks = slices.Clone(req.IDPLinks)
	next.Passkeys = slices.Clone(req.Passkeys)
	next.U2F = slices.Clone(req.U2F)
	next.OTP = req.OTP
	return next, nil
}

// ListPasskeys returns the passkeys of user userID (stored as u, nil when
// unknown) if p may see them.
//
// Errors: PERMISSION_DENIED (PERMISSION-USER), NOT_FOUND (USER-NOT-FOUND,
// for a system principal only).
func ListPasskeys(p Principal, userID string, u *User) ([]Passkey, error) {
	if !p.mayAskAbout(userID) {
		return nil, ErrDeniedUser
	}
	if u == nil {
		return nil, p.unknownUser()
	}
	if !p.mayAct(userID, u) {
		return nil, ErrDeniedUser
	}
	return slices.Clone(u.Passkeys), nil
}
