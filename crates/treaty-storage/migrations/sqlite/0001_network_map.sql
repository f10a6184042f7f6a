-- Network-map component, version 1: the node's cached copy of the network map.
-- One row (id = 1) for the snapshot's header, one row per node info in map order.
-- Signed values are stored as their canonical (BCS) encoding.

CREATE TABLE treaty_network_map (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    parameters  BLOB    NOT NULL,
    revocations BLOB    NOT NULL,
    etag        TEXT,
    fetched_at  INTEGER NOT NULL
);

CREATE TABLE treaty_network_map_nodes (
    position       INTEGER PRIMARY KEY,
    name           TEXT,
    node_info_hash BLOB    NOT NULL,
    signed         BLOB    NOT NULL
);
