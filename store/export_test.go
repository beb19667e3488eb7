package store

// PagesWritten is bbolt's count of pages written since s was opened (one per
// node written, whatever its size): the journal's write cost in benchmarks.
func PagesWritten(s *Store) int64 {
	st := s.db.Stats()
	return st.TxStats.GetWrite()
}
