using System.Text;

namespace BlockRepl.Iscsi;

/// <summary>
/// Text key=value pairs of login and text PDUs (RFC 7143 6.1): UTF-8 "key=value" strings, each ended by a NUL.
/// Order is kept because responses answer keys in the order they were offered.
/// </summary>
internal static class IscsiTextKeys
{
    /// <summary>Largest total of key=value text accepted in one login or text exchange.</summary>
    public const int MaxTextBytes = 64 * 1024;

    /// <summary>Parses the data segment; a pair without '=' or an empty key throws <see cref="IscsiProtocolException"/>.</summary>
    public static List<KeyValuePair<string, string>> Parse(ReadOnlySpan<byte> data)
    {
        var result = new List<KeyValuePair<string, string>>();
        while (data.Length > 0)
        {
            var end = data.IndexOf((byte)0);
            var item = end < 0 ? data : data[..end];
            data = end < 0 ? default : data[(end + 1)..];
            if (item.Length == 0)
            {
                continue; // padding or a doubled NUL
            }

            var eq = item.IndexOf((byte)'=');
            if (eq <= 0)
            {
                IscsiProtocolException.Throw($"text key without '=': '{Encoding.UTF8.GetString(item)}'");
            }

            result.Add(new(Encoding.UTF8.GetString(item[..eq]), Encoding.UTF8.GetString(item[(eq + 1)..])));
        }

        return result;
    }

    public static byte[] Encode(IEnumerable<KeyValuePair<string, string>> pairs)
    {
        var sb = new StringBuilder();
        foreach (var (key, value) in pairs)
        {
            sb.Append(key).Append('=').Append(value).Append('\0');
        }

        return Encoding.UTF8.GetBytes(sb.ToString());
    }
}
