-- Backtests keep their full record and can be found by the data they ran on (portopt.store schema version 2).
-- detail: BacktestResult.to_dict() (the weights of each rebalance, the config as run); NULL for older rows.
-- config->>'data_hash': the SHA-256 of the prices a backtest saw (portopt.sweep.data_hash); the trial registry
-- counts the distinct configurations run on the same data by it.
ALTER TABLE public.backtests ADD COLUMN detail jsonb;
CREATE INDEX backtests_data_hash ON public.backtests ((config->>'data_hash'));
