-- Packages are versioned: changing what a package sells (price, currency, credits, bonus,
-- expiry) makes a new version; the package keeps its id and shows its current version, each
-- purchase and topup keeps the version it bought (in its package snapshot), and every version
-- stays readable. Renaming or (de)activating a package changes no version.
ALTER TABLE credit_packages ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version >= 1);

CREATE TABLE credit_package_versions (
    package_id                uuid NOT NULL REFERENCES credit_packages(id),
    version                   integer NOT NULL CHECK (version >= 1),
    name                      text NOT NULL,
    price_minor               bigint NOT NULL CHECK (price_minor > 0),
    currency                  text NOT NULL,
    base_credits              numeric(24,6) NOT NULL CHECK (base_credits > 0),
    bonus_credits             numeric(24,6) NOT NULL CHECK (bonus_credits >= 0),
    expires_after_days        integer,
    bonus_expires_after_days  integer,
    created_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (package_id, version)
);

INSERT INTO credit_package_versions (package_id, version, name, price_minor, currency,
                                     base_credits, bonus_credits, expires_after_days,
                                     bonus_expires_after_days, created_at)
SELECT id, 1, name, price_minor, currency, base_credits, bonus_credits, expires_after_days,
       bonus_expires_after_days, created_at
  FROM credit_packages;

-- Pay-what-you-want packages: credits per major currency unit, and the least and most a
-- purchase may pay (the package's price and base credits are those of the least amount).
ALTER TABLE credit_packages
    ADD COLUMN pwyw_credits_per_unit numeric(24,6) CHECK (pwyw_credits_per_unit > 0),
    ADD COLUMN pwyw_min_minor bigint,
    ADD COLUMN pwyw_max_minor bigint,
    ADD CONSTRAINT credit_packages_pwyw CHECK (
        (pwyw_credits_per_unit IS NULL AND pwyw_min_minor IS NULL AND pwyw_max_minor IS NULL)
        OR (pwyw_credits_per_unit IS NOT NULL AND pwyw_min_minor > 0
            AND pwyw_max_minor >= pwyw_min_minor));
ALTER TABLE credit_package_versions
    ADD COLUMN pwyw_credits_per_unit numeric(24,6),
    ADD COLUMN pwyw_min_minor bigint,
    ADD COLUMN pwyw_max_minor bigint;
