# Builds the mcp-ledger binary, and a runtime image with Node.js so that `npx` upstream servers run.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nodejs npm \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mcp-ledger /usr/local/bin/mcp-ledger
ENTRYPOINT ["mcp-ledger"]
