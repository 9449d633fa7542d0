-- Example middle tables (中间表) for the erp.sql connector, PostgreSQL.
-- These match the connector's default column mapping; rename tables/columns freely and say so in
-- hub.yaml (connectors.<name>.settings.outbound / inbound). The same tables can be created with
--   python -m invoice_hub_plugins.erp_sql create-tables postgresql+psycopg://user@host/db
--
-- hub_outbound: the ERP writes one row per invoice it wants issued or sent (status NEW); the hub reads
-- rows in (updated_at, id) order, marks them PICKED (or ERROR with the reason) and, once the e-invoice
-- platform issued the invoice, writes issued_number / issued_date / invoice_status and sets DONE.
-- To send a row again after changing it, the ERP sets status back to NEW and bumps updated_at.
CREATE TABLE hub_outbound (
    id              BIGSERIAL PRIMARY KEY,
    order_no        VARCHAR(255),                 -- the ERP's own document number
    kind            VARCHAR(32),                  -- cn.digital.ordinary | cn.digital.special | invoice | ...
    invoice_number  VARCHAR(64),                  -- empty until issued (then issued_number holds it)
    invoice_code    VARCHAR(64),                  -- legacy invoices only
    issue_date      DATE,
    currency        VARCHAR(32),
    seller_name     VARCHAR(255),
    seller_tax_id   VARCHAR(64),
    buyer_name      VARCHAR(255),
    buyer_tax_id    VARCHAR(64),
    net             NUMERIC(18, 2),
    tax             NUMERIC(18, 2),
    gross           NUMERIC(18, 2),
    invoice_lines   JSON,                         -- [{"name", "quantity", "unit_price", "amount", "tax_rate", "tax_amount"}]
    reverses        VARCHAR(64),                  -- red-letter: number of the invoice it reverses
    remark          VARCHAR(255),
    payload         JSON,                         -- optional: the whole invoice in hub JSON form
    status          VARCHAR(16) NOT NULL DEFAULT 'NEW',   -- NEW / PICKED / DONE / ERROR
    error           TEXT,
    issued_number   VARCHAR(32),                  -- written back by the hub
    issued_code     VARCHAR(16),
    issued_date     DATE,
    invoice_status  VARCHAR(32),                  -- issued / void / red_lettered / partly_red_lettered
    hub_ref         VARCHAR(64),                  -- content hash of the issued invoice in the hub
    updated_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX ix_hub_outbound_cursor ON hub_outbound (status, updated_at, id);

-- hub_inbound: the hub writes one row per delivery; idempotency_key is UNIQUE so a retried delivery
-- never makes a second row. An amendment (same identity, other content) is a new row, version + 1.
-- ERP jobs pick rows with status NEW, book them, and fill erp_doc_no / status / error.
CREATE TABLE hub_inbound (
    id               BIGSERIAL PRIMARY KEY,
    idempotency_key  VARCHAR(160) NOT NULL,
    identity         VARCHAR(160) NOT NULL,       -- CN:<20 digits>, CN:<code>:<number>, <cc>:<tax id>:INV:<no>
    content_hash     VARCHAR(64) NOT NULL,
    event_type       VARCHAR(40),                 -- invoice.received | invoice.status_changed
    kind             VARCHAR(32),
    invoice_number   VARCHAR(64),
    issue_date       DATE,
    seller_tax_id    VARCHAR(32),
    buyer_tax_id     VARCHAR(32),
    gross            NUMERIC(18, 2),
    currency         VARCHAR(3),
    invoice_status   VARCHAR(32),
    source           VARCHAR(64),                 -- the hub connector it came from
    payload          JSON NOT NULL,               -- the whole invoice in hub JSON form
    status           VARCHAR(16) NOT NULL DEFAULT 'NEW',
    erp_doc_no       VARCHAR(64),
    error            TEXT,
    version          INTEGER NOT NULL DEFAULT 1,
    amends           VARCHAR(160),                -- content hash of the version this one amends
    created_at       TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at       TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT uq_hub_inbound_key UNIQUE (idempotency_key)
);
CREATE INDEX ix_hub_inbound_identity ON hub_inbound (identity);
CREATE INDEX ix_hub_inbound_issue_date ON hub_inbound (issue_date);
