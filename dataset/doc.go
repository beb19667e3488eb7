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
// # Caveats
//
// Read loads the whole file into memory. Writing with asUint8 is lossy unless
// every value is k/255 for an integer k in [0, 255]; Write refuses values outside
// [0, 1] in that mode and rounds the rest to the nearest step.
package dataset
