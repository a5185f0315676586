package upstreamsim

import "time"

// splitMix is SplitMix64 (Steele, Lea, Flood 2014): a tiny generator with good
// statistical quality that lives on the stack. The simulator gives every
// request its own, seeded from Config.Seed and the request's sequence number,
// so draws need neither a global lock nor a sync.Pool, and a run with the same
// seed and request order injects the same faults.
type splitMix uint64

const golden = 0x9e3779b97f4a7c15

// newSplitMix starts the generator of stream n under seed. The start is
// scrambled rather than seed+n*golden: SplitMix64 steps by golden, so
// neighbouring streams started that way would be the same sequence shifted
// by one draw.
func newSplitMix(seed, n uint64) splitMix {
	return splitMix(mix64(n*golden ^ mix64(seed+golden)))
}

func (s *splitMix) next() uint64 {
	*s += golden
	return mix64(uint64(*s))
}

// mix64 is SplitMix64's finaliser, a bijection that spreads every input bit
// over the whole output.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// float returns a uniform draw in [0,1), so a rate of 1 always hits and a rate
// of 0 never does.
func (s *splitMix) float() float64 {
	return float64(s.next()>>11) / (1 << 53)
}

// intn returns a uniform draw in [0,n); n must be positive. The modulo bias is
// below 2^-40 for the small n used here.
func (s *splitMix) intn(n int) int {
	return int(s.next() % uint64(n))
}

// duration returns a uniform draw in [0,d].
func (s *splitMix) duration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(s.next() % (uint64(d) + 1))
}
