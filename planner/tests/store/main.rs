//! Storage and collection against real MariaDB and Redis (see mod docs).
