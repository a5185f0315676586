package route

import (
	"sync"
	"sync/atomic"
)

// Load counts the requests outstanding on one upstream. It outlives a
// reload (the gateway hands the same Load to the upstream's next state), so
// requests still running on an old config go on counting where new ones
// look.
type Load struct {
	n atomic.Int64
	// OnChange, when set, is told every change (a metrics gauge's Add).
	OnChange func(delta float64)
}

// Outstanding is the number of requests on the upstream now.
func (l *Load) Outstanding() int64 {
	if l == nil {
		return 0
	}
	return l.n.Load()
}

func (l *Load) add(d int64) {
	if l == nil {
		return
	}
	l.n.Add(d)
	if l.OnChange != nil {
		l.OnChange(float64(d))
	}
}

// Balance is how a pool picks the member for a request.
type Balance int

const (
	// LeastBusy picks the member with the fewest requests outstanding;
	// among equals it takes them in turn, so equal members share evenly
	// and a faster one, freed sooner, gets more.
	LeastBusy Balance = iota
	// Weighted shares requests by weight, in nginx's smooth weighted round
	// robin: over any stretch of requests each member's share follows its
	// weight, without bursts to one member.
	Weighted
)

// Pool is a link of equivalent upstreams (a model server on each GPU host,
// several keys of one relay) that share its requests. Only members that
// can take a request are picked: not disabled, health probe passing,
// breaker admitting.
type Pool struct {
	Members []Target
	Balance Balance
	// Weights are the members' weights, by index (Weighted only; missing
	// or < 1 counts as 1).
	Weights []int

	mu sync.Mutex
	// next is where LeastBusy starts looking, one past its last pick, so
	// that ties go round.
	next int
	// current is Weighted's running score per member.
	current []int
}

// NewPool builds a pool of members.
func NewPool(members []Target, b Balance, weights []int) *Pool {
	p := &Pool{Members: members, Balance: b, Weights: make([]int, len(members)), current: make([]int, len(members))}
	for i := range p.Weights {
		p.Weights[i] = 1
		if i < len(weights) && weights[i] > 0 {
			p.Weights[i] = weights[i]
		}
	}
	return p
}

// pick chooses the member for the next try and counts it outstanding
// (under the pool's lock, so that requests arriving together do not all
// see the same least busy member). states are the members' parts in this
// request (runLink): skipped ones are never picked, and a member not yet
// asked is preferred to one that failed. It returns -1 when no member can
// take the request.
func (p *Pool) pick(states []int8) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, want := range [2]int8{memberFresh, memberRetry} {
		best := -1
		switch p.Balance {
		case Weighted:
			total := 0
			for i := range p.Members {
				if states[i] != want || !p.Members[i].Upstream.Available() {
					continue
				}
				p.current[i] += p.Weights[i]
				total += p.Weights[i]
				if best < 0 || p.current[i] > p.current[best] {
					best = i
				}
			}
			if best >= 0 {
				p.current[best] -= total
			}
		default:
			n := len(p.Members)
			var least int64
			for k := range n {
				i := (p.next + k) % n
				if states[i] != want || !p.Members[i].Upstream.Available() {
					continue
				}
				if l := p.Members[i].Upstream.Load.Outstanding(); best < 0 || l < least {
					best, least = i, l
				}
			}
			if best >= 0 {
				p.next = (best + 1) % n
			}
		}
		if best >= 0 {
			p.Members[best].Upstream.Load.add(1)
			return best
		}
	}
	return -1
}
