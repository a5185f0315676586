-- One row per request the gateway answered or refused. id is the
-- gateway's own unique id for the row: the primary key that makes a
-- replayed batch a no-op. request_id is the X-Request-Id the client got,
-- which a client may choose, so it is indexed but not unique.
CREATE TABLE ledger (
	id                text PRIMARY KEY,
	at                timestamptz NOT NULL,
	request_id        text NOT NULL,
	key_name          text NOT NULL DEFAULT '',
	team              text NOT NULL DEFAULT '',
	api               text NOT NULL,
	model             text NOT NULL,
	upstream          text NOT NULL,
	status            integer NOT NULL,
	stream            boolean NOT NULL DEFAULT false,
	usage_known       boolean NOT NULL DEFAULT false,
	prompt_tokens     bigint NOT NULL DEFAULT 0,
	completion_tokens bigint NOT NULL DEFAULT 0,
	cached_tokens     bigint NOT NULL DEFAULT 0,
	reasoning_tokens  bigint NOT NULL DEFAULT 0,
	cost_usd          double precision NOT NULL DEFAULT 0,
	savings_usd       double precision NOT NULL DEFAULT 0,
	cache_hit         boolean NOT NULL DEFAULT false,
	latency_ms        double precision NOT NULL,
	ttft_ms           double precision,
	attempts          integer NOT NULL DEFAULT 0,
	fallback_path     text[] NOT NULL DEFAULT '{}'
);

CREATE INDEX ledger_request_id ON ledger (request_id);
CREATE INDEX ledger_team_at ON ledger (team, at);
CREATE INDEX ledger_key_at ON ledger (key_name, at);
CREATE INDEX ledger_at ON ledger (at);
