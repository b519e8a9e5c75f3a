-- Coordinators sharing a database look now and then for held jobs that none of them may be
-- watching (the one they were submitted to died): only those rows are indexed.
CREATE INDEX jobs_held ON jobs (id) WHERE held = 1;
