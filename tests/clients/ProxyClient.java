// The PostgreSQL JDBC driver through `lakebase proxy`: no password; a query, COPY, LISTEN/NOTIFY, a cancel.
// Usage: java -cp postgresql.jar ProxyClient.java JDBC_URL USER  (the single-file source launcher)
// Prints "ok <what>" lines; exits non-zero on the first failure.
import java.io.StringReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;

public class ProxyClient {
    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError("failed: " + what);
        System.out.println("ok " + what);
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        try (Connection conn = DriverManager.getConnection(url, props)) {
            Statement st = conn.createStatement();
            ResultSet rs = st.executeQuery("SELECT current_user, 41 + 1");
            rs.next();
            check(rs.getString(1).equals(args[1]) && rs.getInt(2) == 42, "query");

            st.execute("CREATE TEMP TABLE t (n int)");
            CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder rows = new StringBuilder();
            for (int i = 0; i < 100; i++) rows.append(i).append('\n');
            check(copy.copyIn("COPY t FROM STDIN", new StringReader(rows.toString())) == 100, "copy in");
            StringWriter out = new StringWriter();
            copy.copyOut("COPY (SELECT n FROM t WHERE n < 3 ORDER BY n) TO STDOUT", out);
            check(out.toString().equals("0\n1\n2\n"), "copy out");

            st.execute("LISTEN jdbc_channel");
            try (Connection other = DriverManager.getConnection(url, props)) {
                other.createStatement().execute("NOTIFY jdbc_channel, 'from jdbc'");
            }
            PGNotification[] notes = conn.unwrap(PGConnection.class).getNotifications(10000);
            check(notes != null && notes.length == 1 && notes[0].getName().equals("jdbc_channel")
                  && notes[0].getParameter().equals("from jdbc"), "listen/notify");

            Statement sleeper = conn.createStatement();
            Thread canceller = new Thread(() -> {
                try { Thread.sleep(300); sleeper.cancel(); } catch (Exception e) { throw new RuntimeException(e); }
            });
            canceller.start();
            String state = null;
            try {
                sleeper.execute("SELECT pg_sleep(30)");
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            canceller.join();
            check("57014".equals(state), "cancel");
            rs = st.executeQuery("SELECT 1");
            rs.next();
            check(rs.getInt(1) == 1, "session after cancel");
        }
    }
}
