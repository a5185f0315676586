//go:build race

package main

// raceEnabled: this test binary runs under the race detector, where
// loopback HTTP is several times slower, so load tests send fewer requests.
const raceEnabled = true
