//go:build race

package scheduler

// raceDetector says whether the tests run under the race detector (trials).
const raceDetector = true
