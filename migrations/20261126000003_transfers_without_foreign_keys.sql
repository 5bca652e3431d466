-- The hot path books thousands of transfers a second. Each foreign key on `transfers` costs a
-- lookup and a row lock (FOR KEY SHARE) per inserted row, on rows the booking transaction has
-- already locked and checked: the org's account is locked FOR UPDATE before any transfer is
-- written, and both account ids come from that locked row or the fixed system accounts. The
-- invariant check (`creditflow verify-ledger`, and the tests) confirms every transfer's
-- accounts exist and balance.
ALTER TABLE transfers DROP CONSTRAINT transfers_org_id_fkey;
ALTER TABLE transfers DROP CONSTRAINT transfers_debit_account_id_fkey;
ALTER TABLE transfers DROP CONSTRAINT transfers_credit_account_id_fkey;
