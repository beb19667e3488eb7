//go:build race

package gateway

// raceDetector says whether the tests run under the race detector.
const raceDetector = true
