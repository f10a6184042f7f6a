-- Messaging component, version 1: the outbox and the inbox.
-- message_id is the 16-byte UUID; session_id is the u64 session bit-cast to a signed 64-bit
-- integer; seq (an identity, never reused) gives enqueue / arrival order.

CREATE TABLE treaty_outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  BYTEA  NOT NULL UNIQUE CHECK (length(message_id) = 16),
    destination TEXT   NOT NULL,
    session_id  BIGINT NOT NULL,
    topic       TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX treaty_outbox_by_destination ON treaty_outbox (destination, seq);

-- A processed message keeps its row (its id deduplicates redeliveries) but loses its payload.
CREATE TABLE treaty_inbox (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id BYTEA   NOT NULL UNIQUE CHECK (length(message_id) = 16),
    sender     TEXT    NOT NULL,
    session_id BIGINT  NOT NULL,
    topic      TEXT    NOT NULL,
    payload    BYTEA,
    processed  BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE INDEX treaty_inbox_unprocessed ON treaty_inbox (seq) WHERE processed = FALSE;
