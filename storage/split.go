package storage

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// SetAppliedSeq sets AppliedSeq to seq, lower or not: for a store made by
// splitting another (Split), whose position is set once.
func (t *Tx) SetAppliedSeq(seq uint64) error {
	// The timestamp kept was another command's: none is known now.
	if err := t.tx.Bucket(bucketMeta).Delete(keyAppliedAt); err != nil {
		return err
	}
	return t.putMetaUint(keyAppliedSeq, seq)
}

// Split copies src into the stores dsts, one per partition: each user, with
// its outcome records and its events waiting in the outbox, into
// dsts[partOf(userID)]; the outcome records of commands that named no valid
// user into every one (they are few, and a repeat of such a command may
// come to any partition). Each dst gets AppliedSeq applied. The dsts are
// written in one transaction each, committed only when the whole copy
// succeeded; a dst that already holds users is refused.
func Split(src *Store, dsts []*Store, partOf func(userID string) int, applied uint64) (err error) {
	txs := make([]*bolt.Tx, len(dsts))
	defer func() {
		for _, tx := range txs {
			if tx != nil && err != nil {
				_ = tx.Rollback()
			}
		}
	}()
	for i, d := range dsts {
		if txs[i], err = d.db.Begin(true); err != nil {
			return fmt.Errorf("storage: split into %s: %w", d.path, err)
		}
		if k, _ := txs[i].Bucket(bucketUsers).Cursor().First(); k != nil {
			return fmt.Errorf("storage: split into %s: it already holds users", d.path)
		}
	}
	counts := make([]int64, len(dsts))
	err = src.db.View(func(stx *bolt.Tx) error { return copySplit(stx, txs, partOf, counts) })
	if err != nil {
		return fmt.Errorf("storage: split %s: %w", src.path, err)
	}
	for i, tx := range txs {
		t := &Tx{tx: tx}
		if err := t.SetAppliedSeq(applied); err != nil {
			return err
		}
		if err := t.putMetaUint(keyOutcomeCount, uint64(counts[i])); err != nil {
			return err
		}
	}
	for i, tx := range txs {
		txs[i] = nil
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("storage: split into %s: %w", dsts[i].path, err)
		}
	}
	return nil
}

// copySplit copies every record of stx into the partition's transaction
// its user belongs to (the outcomes of commands that name no valid user
// into every one), counting the outcome records each gets.
func copySplit(stx *bolt.Tx, txs []*bolt.Tx, partOf func(userID string) int, counts []int64) error {
	err := stx.Bucket(bucketUsers).ForEach(func(k, v []byte) error {
		user, _, isOutcome := bytes.Cut(k, []byte{0})
		p := partOf(string(user))
		b := txs[p].Bucket(bucketUsers)
		b.FillPercent = usersFill
		if isOutcome {
			counts[p]++
		}
		return b.Put(bytes.Clone(k), bytes.Clone(v))
	})
	if err != nil {
		return err
	}
	err = stx.Bucket(bucketOutcomes).ForEach(func(k, v []byte) error {
		for i, tx := range txs {
			counts[i]++
			if err := tx.Bucket(bucketOutcomes).Put(bytes.Clone(k), bytes.Clone(v)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return stx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
		user, _, _ := bytes.Cut(k, []byte{0})
		return txs[partOf(string(user))].Bucket(bucketOutbox).Put(bytes.Clone(k), bytes.Clone(v))
	})
}

// Records calls fn with every record of the state, in key order: the users
// bucket (users and their outcomes), the outcomes of commands that named no
// user, the meta values (applied sequence, outcome count) and the control
// entries. The outbox
// is left out: which events are still waiting depends on when they were
// published, not on the commands. Two stores that applied the same
// commands from the same state hold the same records.
func (s *Store) Records(fn func(bucket string, key, value []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketUsers, bucketOutcomes, bucketMeta, bucketControl} {
			err := tx.Bucket(name).ForEach(func(k, v []byte) error { return fn(string(name), k, v) })
			if err != nil {
				return err
			}
		}
		return nil
	})
}
