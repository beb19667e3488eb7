// Package dataset reads and writes sneakgate sample files: labelled rows of
// float32 values used for replayable evaluation samples, validation splits and the
// reference sets of SneakPeek kNN estimators.
//
// # Format
//
// A sample file is little-endian binary:
//
//	offset  size    field
//	0       8       magic "SGSAMP01"
//	8       4       uint32 n, the number of rows
//	12      4       uint32 d, the number of values per row
//	16      4       uint32 flags; bit 0 set: values are stored as uint8 v and
//	                decode to float32(v) / 255, else as float32
//	20      n*d*s   the values, row-major (s = 1 or 4 bytes)
//	...     n*4     the labels, int32, one per row
//
// Nothing may follow the labels. Other flag bits are reserved and must be 0.
// models/train/common.py writes and reads the same format.
//
// # Arrays from numpy and CSV
//
// ReadArray reads the arrays a user's numpy or PyTorch pipeline writes, for
// `sneakgate app build` (package appbuild): a .npy file (np.save: formats 1.0,
// 2.0, 3.0; C order; little- or big-endian float32, float64, int8..int64,
// uint8..uint64 or bool; Fortran order and other dtypes are refused with a
// hint), a member of a .npz archive (np.savez, np.savez_compressed; named
// "file.npz:NAME") or a numeric CSV/TSV table (an optional header row is
// skipped). Every error names the file. An Array converts to float32 features
// (Float32s: integers by value, a uint8 255 stays 255) or to integer labels
// (Ints: whole-number floats are accepted, as CSV columns are floats).
// EncodeNPY and WriteNPY write the .npy layout numpy writes.
//
// # Caveats
//
// Read loads the whole file into memory. Writing with asUint8 is lossy unless
// every value is k/255 for an integer k in [0, 255]; Write refuses values outside
// [0, 1] in that mode and rounds the rest to the nearest step.
package dataset
