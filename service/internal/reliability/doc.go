// Package reliability holds the gateway's reliability and security test
// suite: upstream faults under load, Redis dying under load, clients that go
// away, hostile requests, secrets that must never leak, and an opt-in soak.
//
// Every test drives a whole gateway built by app.New, as the command builds
// it, over loopback: the fault-injecting upstream simulator as upstreams, a
// real redis-server where Redis is involved. Tests stop by themselves (a
// bounded number of requests, never a wall-clock run) and assert outcomes
// counted per request, never speed, so they hold on a loaded CI machine.
//
// The package has no non-test code besides this file. The soak test runs
// only when RELAYGATE_SOAK is set to a duration:
//
//	RELAYGATE_SOAK=10m go test -run Soak -timeout 30m ./service/internal/reliability/
package reliability
