package upstreamsim

import "sync/atomic"

// Endpoint names used as keys of Stats.Requests.
const (
	EndpointChatCompletions = "chat_completions"
	EndpointEmbeddings      = "embeddings"
	EndpointModels          = "models"
	EndpointMessages        = "messages"
	EndpointCountTokens     = "count_tokens"
	EndpointResponses       = "responses"   // POST /v1/responses and the by-id endpoints
	EndpointCompletions     = "completions" // legacy POST /v1/completions
	EndpointModerations     = "moderations"
	EndpointImages          = "images" // POST /v1/images/generations
	EndpointSpeech          = "speech"
	EndpointTranscriptions  = "transcriptions"
	EndpointOther           = "other" // unknown paths, answered 404
)

// Fault kinds used as keys of Stats.Faults.
const (
	FaultFailure = "failure"
	FaultHang    = "hang"
	FaultReset   = "reset"
	FaultCut     = "cut"
	// FaultErrorEvent: a Messages stream's error event after message_start.
	FaultErrorEvent = "error_event"
	// FaultFailedAfterCreated: a Responses stream that sent
	// response.created, then response.failed.
	FaultFailedAfterCreated = "failed_after_created"
)

// Rejection reasons used as keys of Stats.Rejected: requests refused before
// any simulated work, as a real provider would.
const (
	RejectBadRequest       = "bad_request"
	RejectUnauthorized     = "unauthorized"
	RejectModelNotFound    = "model_not_found"
	RejectMethodNotAllowed = "method_not_allowed"
	RejectTooLarge         = "too_large"
)

// Stats is a snapshot of the simulator's counters, served at GET /sim/stats.
// Every map holds all of its keys, zero or not, so a test can index it
// without checking presence.
type Stats struct {
	// Requests counts requests by endpoint (EndpointChatCompletions, ...).
	Requests map[string]uint64 `json:"requests"`
	// Rejected counts requests refused with a 4xx by reason (RejectBadRequest, ...).
	Rejected map[string]uint64 `json:"rejected"`
	// Faults counts injected faults by kind (FaultFailure, ...).
	Faults map[string]uint64 `json:"faults"`
	// StreamsStarted counts streams whose headers were sent; StreamsCompleted
	// those that reached data: [DONE].
	StreamsStarted   uint64 `json:"streams_started"`
	StreamsCompleted uint64 `json:"streams_completed"`
	// Cancelled counts requests whose client went away before the answer was
	// complete: while waiting for latency, between chunks, during a hang, or
	// when a write failed. Requests cut short by the server shutting down
	// count here too.
	Cancelled uint64 `json:"cancelled"`
	// InFlight is the number of requests being served now (not /sim/ ones).
	// POST /sim/reset leaves it alone: it is a gauge, not a counter.
	InFlight int64 `json:"in_flight"`
}

type counters struct {
	chat, embeddings, models, other, messages, countTokens, responses atomic.Uint64
	completions, moderations, images, speech, transcriptions          atomic.Uint64
	badRequest, unauthorized, modelNotFound, notAllowed, tooBig       atomic.Uint64
	faultFailure, faultHang, faultReset, faultCut                     atomic.Uint64
	faultErrorEvent, faultFailedAfterCreated                          atomic.Uint64
	streamsStarted, streamsCompleted, cancelled                       atomic.Uint64
	inFlight                                                          atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests: map[string]uint64{
			EndpointChatCompletions: c.chat.Load(),
			EndpointEmbeddings:      c.embeddings.Load(),
			EndpointResponses:       c.responses.Load(),
			EndpointModels:          c.models.Load(),
			EndpointMessages:        c.messages.Load(),
			EndpointCountTokens:     c.countTokens.Load(),
			EndpointCompletions:     c.completions.Load(),
			EndpointModerations:     c.moderations.Load(),
			EndpointImages:          c.images.Load(),
			EndpointSpeech:          c.speech.Load(),
			EndpointTranscriptions:  c.transcriptions.Load(),
			EndpointOther:           c.other.Load(),
		},
		Rejected: map[string]uint64{
			RejectBadRequest:       c.badRequest.Load(),
			RejectUnauthorized:     c.unauthorized.Load(),
			RejectModelNotFound:    c.modelNotFound.Load(),
			RejectMethodNotAllowed: c.notAllowed.Load(),
			RejectTooLarge:         c.tooBig.Load(),
		},
		Faults: map[string]uint64{
			FaultFailure:            c.faultFailure.Load(),
			FaultHang:               c.faultHang.Load(),
			FaultReset:              c.faultReset.Load(),
			FaultCut:                c.faultCut.Load(),
			FaultErrorEvent:         c.faultErrorEvent.Load(),
			FaultFailedAfterCreated: c.faultFailedAfterCreated.Load(),
		},
		StreamsStarted:   c.streamsStarted.Load(),
		StreamsCompleted: c.streamsCompleted.Load(),
		Cancelled:        c.cancelled.Load(),
		InFlight:         c.inFlight.Load(),
	}
}

func (c *counters) zero() {
	for _, v := range []*atomic.Uint64{
		&c.chat, &c.embeddings, &c.models, &c.other, &c.messages, &c.countTokens, &c.responses, &c.faultFailedAfterCreated,
		&c.completions, &c.moderations, &c.images, &c.speech, &c.transcriptions,
		&c.badRequest, &c.unauthorized, &c.modelNotFound, &c.notAllowed, &c.tooBig,
		&c.faultFailure, &c.faultHang, &c.faultReset, &c.faultCut, &c.faultErrorEvent,
		&c.streamsStarted, &c.streamsCompleted, &c.cancelled,
	} {
		v.Store(0)
	}
}
