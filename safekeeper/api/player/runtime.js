/* safekeeper's SCORM runtime: window.API (SCORM 1.2) and window.API_1484_11 (SCORM 2004)
 * on the player page, which frames the package's content on the same (package) origin, so
 * content finds them by the usual walk up window.parent / window.opener.
 *
 * The data model lives here; LMSCommit/Commit and LMSFinish/Terminate send it to the
 * server through this launch's capability (POST /r/<capability>/commit, synchronous so
 * that a refused commit answers "false" with error 101 / 391), and the next launch
 * starts from what was stored (resume with cmi.suspend_data and the location).
 */
(function () {
  "use strict";
  var launch = JSON.parse(document.getElementById("sk-launch").textContent);

  // -- data model definitions ------------------------------------------------------------
  // [pattern, access ("ro" | "rw" | "wo"), type, children or initial]
  var S255 = { max: 255 }, S4096 = { max: 4096 }, S64000 = { max: 64000 }, S1000 = { max: 1000 };
  var S4000 = { max: 4000 }, S250 = { max: 250 }, ID = { max: 4000, nonEmpty: true };
  var DEC = { decimal: true }, DEC12 = { decimal: true, blank: true };
  var DEC100 = { decimal: true, blank: true, min: 0, max100: true };

  function vocab(words) { return { vocab: words }; }

  var SCORM12 = [
    ["cmi._children", "keyword", "core,suspend_data,launch_data,comments,objectives,student_data,student_preference,interactions"],
    ["cmi.core._children", "keyword", "student_id,student_name,lesson_location,credit,lesson_status,entry,score,total_time,lesson_mode,exit,session_time"],
    ["cmi.core.student_id", "ro"], ["cmi.core.student_name", "ro"],
    ["cmi.core.lesson_location", "rw", S255, ""], ["cmi.core.credit", "ro"],
    ["cmi.core.lesson_status", "rw", vocab(["passed", "completed", "failed", "incomplete", "browsed"]), "not attempted"],
    ["cmi.core.entry", "ro"],
    ["cmi.core.score._children", "keyword", "raw,min,max"],
    ["cmi.core.score.raw", "rw", DEC100, ""], ["cmi.core.score.min", "rw", DEC100, ""],
    ["cmi.core.score.max", "rw", DEC100, ""],
    ["cmi.core.total_time", "ro"], ["cmi.core.lesson_mode", "ro"],
    ["cmi.core.exit", "wo", vocab(["time-out", "suspend", "logout", ""])],
    ["cmi.core.session_time", "wo", { timespan12: true }],
    ["cmi.suspend_data", "rw", S4096, ""], ["cmi.launch_data", "ro"],
    ["cmi.comments", "rw", S4096, ""], ["cmi.comments_from_lms", "ro"],
    ["cmi.objectives._children", "keyword", "id,score,status"],
    ["cmi.objectives._count", "count", "cmi.objectives"],
    ["cmi.objectives.n.id", "rw", ID, ""],
    ["cmi.objectives.n.score._children", "keyword", "raw,min,max"],
    ["cmi.objectives.n.score.raw", "rw", DEC100, ""], ["cmi.objectives.n.score.min", "rw", DEC100, ""],
    ["cmi.objectives.n.score.max", "rw", DEC100, ""],
    ["cmi.objectives.n.status", "rw", vocab(["passed", "completed", "failed", "incomplete", "browsed", "not attempted"]), ""],
    ["cmi.student_data._children", "keyword", "mastery_score,max_time_allowed,time_limit_action"],
    ["cmi.student_data.mastery_score", "ro"], ["cmi.student_data.max_time_allowed", "ro"],
    ["cmi.student_data.time_limit_action", "ro"],
    ["cmi.student_preference._children", "keyword", "audio,language,speed,text"],
    ["cmi.student_preference.audio", "rw", { integer: true, min: -1, max: 100 }, "0"],
    ["cmi.student_preference.language", "rw", S255, ""],
    ["cmi.student_preference.speed", "rw", { integer: true, min: -100, max: 100 }, "0"],
    ["cmi.student_preference.text", "rw", { integer: true, min: -1, max: 1 }, "0"],
    ["cmi.interactions._children", "keyword", "id,objectives,time,type,correct_responses,weighting,student_response,result,latency"],
    ["cmi.interactions._count", "count", "cmi.interactions"],
    ["cmi.interactions.n.id", "wo", ID],
    ["cmi.interactions.n.objectives._count", "count", "cmi.interactions.n.objectives"],
    ["cmi.interactions.n.objectives.n.id", "wo", ID],
    ["cmi.interactions.n.time", "wo", { time12: true }],
    ["cmi.interactions.n.type", "wo", vocab(["true-false", "choice", "fill-in", "matching", "performance", "sequencing", "likert", "numeric"])],
    ["cmi.interactions.n.correct_responses._count", "count", "cmi.interactions.n.correct_responses"],
    ["cmi.interactions.n.correct_responses.n.pattern", "wo", S255],
    ["cmi.interactions.n.weighting", "wo", DEC],
    ["cmi.interactions.n.student_response", "wo", S255],
    ["cmi.interactions.n.result", "wo", { vocabOrDecimal: ["correct", "wrong", "unanticipated", "neutral"] }],
    ["cmi.interactions.n.latency", "wo", { timespan12: true }]
  ];

  var SCORM2004 = [
    ["cmi._version", "ro"],
    ["cmi.comments_from_learner._children", "keyword", "comment,location,timestamp"],
    ["cmi.comments_from_learner._count", "count", "cmi.comments_from_learner"],
    ["cmi.comments_from_learner.n.comment", "rw", S4000],
    ["cmi.comments_from_learner.n.location", "rw", S250],
    ["cmi.comments_from_learner.n.timestamp", "rw", { timestamp: true }],
    ["cmi.comments_from_lms._children", "keyword", "comment,location,timestamp"],
    ["cmi.comments_from_lms._count", "count", "cmi.comments_from_lms"],
    ["cmi.completion_status", "rw", vocab(["completed", "incomplete", "not attempted", "unknown"]), "unknown"],
    ["cmi.completion_threshold", "ro"], ["cmi.credit", "ro"], ["cmi.entry", "ro"],
    ["cmi.exit", "wo", vocab(["time-out", "suspend", "logout", "normal", ""])],
    ["cmi.interactions._children", "keyword", "id,type,objectives,timestamp,correct_responses,weighting,learner_response,result,latency,description"],
    ["cmi.interactions._count", "count", "cmi.interactions"],
    ["cmi.interactions.n.id", "rw", ID],
    ["cmi.interactions.n.type", "rw", vocab(["true-false", "choice", "fill-in", "long-fill-in", "likert", "matching", "performance", "sequencing", "numeric", "other"])],
    ["cmi.interactions.n.objectives._count", "count", "cmi.interactions.n.objectives"],
    ["cmi.interactions.n.objectives.n.id", "rw", ID],
    ["cmi.interactions.n.timestamp", "rw", { timestamp: true }],
    ["cmi.interactions.n.correct_responses._count", "count", "cmi.interactions.n.correct_responses"],
    ["cmi.interactions.n.correct_responses.n.pattern", "rw", S4000],
    ["cmi.interactions.n.weighting", "rw", DEC],
    ["cmi.interactions.n.learner_response", "rw", S4000],
    ["cmi.interactions.n.result", "rw", { vocabOrDecimal: ["correct", "incorrect", "unanticipated", "neutral"] }],
    ["cmi.interactions.n.latency", "rw", { duration: true }],
    ["cmi.interactions.n.description", "rw", S250],
    ["cmi.launch_data", "ro"],
    ["cmi.learner_id", "ro"], ["cmi.learner_name", "ro"],
    ["cmi.learner_preference._children", "keyword", "audio_level,language,delivery_speed,audio_captioning"],
    ["cmi.learner_preference.audio_level", "rw", { decimal: true, min: 0 }, "1"],
    ["cmi.learner_preference.language", "rw", S250, ""],
    ["cmi.learner_preference.delivery_speed", "rw", { decimal: true, min: 0 }, "1"],
    ["cmi.learner_preference.audio_captioning", "rw", vocab(["-1", "0", "1"]), "0"],
    ["cmi.location", "rw", S1000],
    ["cmi.max_time_allowed", "ro"], ["cmi.mode", "ro"],
    ["cmi.objectives._children", "keyword", "id,score,success_status,completion_status,progress_measure,description"],
    ["cmi.objectives._count", "count", "cmi.objectives"],
    ["cmi.objectives.n.id", "rw", ID],
    ["cmi.objectives.n.score._children", "keyword", "scaled,raw,min,max"],
    ["cmi.objectives.n.score.scaled", "rw", { decimal: true, min: -1, max: 1 }],
    ["cmi.objectives.n.score.raw", "rw", DEC], ["cmi.objectives.n.score.min", "rw", DEC],
    ["cmi.objectives.n.score.max", "rw", DEC],
    ["cmi.objectives.n.success_status", "rw", vocab(["passed", "failed", "unknown"]), "unknown"],
    ["cmi.objectives.n.completion_status", "rw", vocab(["completed", "incomplete", "not attempted", "unknown"]), "unknown"],
    ["cmi.objectives.n.progress_measure", "rw", { decimal: true, min: 0, max: 1 }],
    ["cmi.objectives.n.description", "rw", S250],
    ["cmi.progress_measure", "rw", { decimal: true, min: 0, max: 1 }],
    ["cmi.scaled_passing_score", "ro"],
    ["cmi.score._children", "keyword", "scaled,raw,min,max"],
    ["cmi.score.scaled", "rw", { decimal: true, min: -1, max: 1 }],
    ["cmi.score.raw", "rw", DEC], ["cmi.score.min", "rw", DEC], ["cmi.score.max", "rw", DEC],
    ["cmi.session_time", "wo", { duration: true }],
    ["cmi.success_status", "rw", vocab(["passed", "failed", "unknown"]), "unknown"],
    ["cmi.suspend_data", "rw", S64000],
    ["cmi.time_limit_action", "ro"], ["cmi.total_time", "ro"],
    ["adl.nav.request", "rw", { max: 4000 }, "_none_"],
    ["adl.nav.request_valid.continue", "ro"], ["adl.nav.request_valid.previous", "ro"]
  ];

  var MESSAGES = {
    "0": "No error", "101": "General exception", "102": "General initialization failure",
    "103": "Already initialized", "104": "Content instance terminated",
    "111": "General termination failure", "112": "Termination before initialization",
    "113": "Termination after termination", "122": "Retrieve data before initialization",
    "123": "Retrieve data after termination", "132": "Store data before initialization",
    "133": "Store data after termination", "142": "Commit before initialization",
    "143": "Commit after termination", "201": "Invalid argument error",
    "202": "Element cannot have children", "203": "Element not an array - cannot have count",
    "301": "Not initialized", "351": "General set failure", "391": "General commit failure",
    "401": "Not implemented error", "402": "Invalid set value, element is a keyword",
    "403": "Element is read only", "404": "Element is write only",
    "405": "Incorrect data type", "406": "Data model element type mismatch",
    "407": "Data model element value out of range", "408": "Data model dependency not established"
  };
  var MESSAGES_2004 = {
    "301": "General get failure", "401": "Undefined data model element",
    "402": "Unimplemented data model element", "403": "Data model element value not initialized",
    "404": "Data model element is read only", "405": "Data model element is write only"
  };

  // -- types -----------------------------------------------------------------------------
  var DECIMAL = /^-?\d+(\.\d+)?$/;
  function valid(type, value) {
    if (type.max && !type.decimal && !type.integer && value.length > type.max) return false;
    if (type.nonEmpty && !/\S/.test(value)) return false;
    if (type.vocab) return type.vocab.indexOf(value) !== -1;
    if (type.vocabOrDecimal) return type.vocabOrDecimal.indexOf(value) !== -1 || DECIMAL.test(value);
    if (type.decimal) {
      if (type.blank && value === "") return true;
      return DECIMAL.test(value);
    }
    if (type.integer) return /^-?\d+$/.test(value);
    if (type.timespan12) return /^\d{2,4}:\d{2}:\d{2}(\.\d{1,2})?$/.test(value);
    if (type.time12) return /^\d{2}:\d{2}:\d{2}(\.\d{1,2})?$/.test(value);
    if (type.duration) return /^P(?!$)(\d+Y)?(\d+M)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d{1,2})?S)?)?$/.test(value);
    if (type.timestamp) return /^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d{1,2})?)?)?(Z|[+-]\d{2}(:\d{2})?)?)?)?)?$/.test(value);
    return true;
  }
  function inRange(type, value) {
    if (value === "" || !(type.decimal || type.integer)) return true;
    var number = parseFloat(value);
    if (type.min !== undefined && number < type.min) return false;
    if (type.max100 && number > 100) return false;
    if (type.max !== undefined && (type.decimal || type.integer) && number > type.max) return false;
    return true;
  }

  // -- one API object per version ----------------------------------------------------------
  function Runtime(version) {
    var is2004 = version === "scorm2004";
    var defs = is2004 ? SCORM2004 : SCORM12;
    var table = {};
    defs.forEach(function (d) { table[d[0]] = d; });
    var data = {};
    var stored = launch.state || {};
    Object.keys(stored).forEach(function (k) { data[k] = String(stored[k]); });
    var fixed = is2004 ? {
      "cmi._version": "1.0", "cmi.credit": "credit", "cmi.mode": "normal",
      "cmi.entry": launch.entry, "cmi.learner_id": launch.learner_id,
      "cmi.learner_name": launch.learner_name, "cmi.launch_data": launch.launch_data || "",
      "cmi.total_time": launch.total_time_2004, "cmi.time_limit_action": "continue,no message",
      "adl.nav.request_valid.continue": "unknown", "adl.nav.request_valid.previous": "unknown"
    } : {
      "cmi.core.student_id": launch.learner_id, "cmi.core.student_name": launch.learner_name,
      "cmi.core.credit": "credit", "cmi.core.entry": launch.entry,
      "cmi.core.total_time": launch.total_time_12, "cmi.core.lesson_mode": "normal",
      "cmi.launch_data": launch.launch_data || "", "cmi.comments_from_lms": "",
      "cmi.student_data.mastery_score": "", "cmi.student_data.max_time_allowed": "",
      "cmi.student_data.time_limit_action": "continue,no message"
    };
    // A previous session's exit and time do not carry over.
    delete data[is2004 ? "cmi.exit" : "cmi.core.exit"];
    delete data[is2004 ? "cmi.session_time" : "cmi.core.session_time"];
    if (!is2004 && data["cmi.core.lesson_status"] === undefined) {
      data["cmi.core.lesson_status"] = "not attempted";
    }
    var state = "new"; // new → running → done
    var lastError = "0";
    var diagnostic = "";

    function fail(code, why) { lastError = code; diagnostic = why || ""; return code; }
    function ok() { lastError = "0"; diagnostic = ""; }

    // "cmi.interactions.3.objectives.0.id" → ["cmi.interactions.n.objectives.n.id", [3, 0]]
    function generic(name) {
      var indexes = [];
      var pattern = name.replace(/\.(\d+)(?=\.|$)/g, function (_, n) { indexes.push(+n); return ".n"; });
      return [pattern, indexes];
    }
    function count(prefix) {
      var n = 0;
      while (Object.keys(data).some(function (k) { return k.indexOf(prefix + "." + n + ".") === 0; })) n++;
      return n;
    }
    function arrayPrefix(name, indexes, upTo) {
      // the concrete prefix of the array holding index number upTo (0-based among indexes)
      var parts = name.split("."), seen = -1, out = [];
      for (var i = 0; i < parts.length; i++) {
        if (/^\d+$/.test(parts[i])) { seen++; if (seen === upTo) return out.join("."); }
        out.push(parts[i]);
      }
      return out.join(".");
    }
    var undefinedCode = is2004 ? "401" : "401";
    var wrongType = is2004 ? "406" : "405";

    function lookup(name) {
      if (typeof name !== "string" || name === "") return [null, fail(is2004 ? "301" : "201", "no element name")];
      var g = generic(name);
      var def = table[g[0]];
      if (!def) {
        var tail = name.split(".").pop();
        if (tail === "_children") return [null, fail(is2004 ? "301" : "202", name + " has no children")];
        if (tail === "_count") return [null, fail(is2004 ? "301" : "203", name + " is not an array")];
        return [null, fail(undefinedCode, name + " is not a data model element")];
      }
      return [{ def: def, indexes: g[1] }, null];
    }

    function getValue(name) {
      if (state === "new") { fail(is2004 ? "122" : "301", "not initialized"); return ""; }
      if (state === "done") { fail(is2004 ? "123" : "101", "already terminated"); return ""; }
      var found = lookup(name);
      if (!found[0]) return "";
      var def = found[0].def;
      var access = def[1];
      if (access === "keyword") { ok(); return def[2]; }
      if (access === "count") {
        ok();
        return String(count(found[0].indexes.length ? name.replace(/\._count$/, "") : def[2]));
      }
      if (access === "wo") { fail(is2004 ? "405" : "404", name + " is write only"); return ""; }
      // an index past the array's end
      for (var i = 0; i < found[0].indexes.length; i++) {
        if (found[0].indexes[i] >= count(arrayPrefix(name, found[0].indexes, i))) {
          fail(is2004 ? "301" : "201", name + ": no such index"); return "";
        }
      }
      if (Object.prototype.hasOwnProperty.call(fixed, name)) { ok(); return String(fixed[name]); }
      if (Object.prototype.hasOwnProperty.call(data, name)) { ok(); return data[name]; }
      if (def[3] !== undefined) { ok(); return def[3]; }
      if (is2004) { fail("403", name + " is not initialized"); return ""; }
      ok(); return "";
    }

    function setValue(name, value) {
      if (state === "new") return fail(is2004 ? "132" : "301", "not initialized") && "false";
      if (state === "done") return fail(is2004 ? "133" : "101", "already terminated") && "false";
      var found = lookup(name);
      if (!found[0]) return "false";
      var def = found[0].def, access = def[1];
      if (access === "keyword" || access === "count") {
        fail(is2004 ? "404" : "402", name + " is a keyword"); return "false";
      }
      if (access === "ro") { fail(is2004 ? "404" : "403", name + " is read only"); return "false"; }
      value = String(value);
      var indexes = found[0].indexes;
      for (var i = 0; i < indexes.length; i++) {
        if (indexes[i] > count(arrayPrefix(name, indexes, i))) {
          fail(is2004 ? "351" : "201", name + ": index past the end"); return "false";
        }
      }
      var type = def[2] || {};
      if (!valid(type, value)) { fail(wrongType, value + " is not valid for " + name); return "false"; }
      if (!inRange(type, value)) { fail(is2004 ? "407" : "405", value + " is out of range for " + name); return "false"; }
      if (is2004 && indexes.length && !/\.id$/.test(name) && /^cmi\.(interactions|objectives)\.\d+\./.test(name)) {
        var owner = name.match(/^cmi\.(interactions|objectives)\.\d+/)[0];
        if (data[owner + ".id"] === undefined) { fail("408", owner + ".id is not set"); return "false"; }
      }
      if (!is2004 && name === "cmi.core.lesson_status" && value === "not attempted") {
        fail("405", "not attempted cannot be set"); return "false";
      }
      data[name] = value;
      ok();
      return "true";
    }

    function send(finish) {
      var request = new XMLHttpRequest();
      try {
        request.open("POST", launch.commit_url, false);
        request.setRequestHeader("content-type", "application/json");
        request.send(JSON.stringify({ version: version, data: data, finish: finish, item: launch.item }));
      } catch (e) {
        return fail(is2004 ? "391" : "101", "commit failed: " + e) && false;
      }
      if (request.status !== 200) {
        return fail(is2004 ? "391" : "101", "commit refused: " + request.status + " " + request.responseText) && false;
      }
      // What the next item of a multi-SCO package starts from.
      launch.state = JSON.parse(JSON.stringify(data));
      launch.entry = data[is2004 ? "cmi.exit" : "cmi.core.exit"] === "suspend" ? "resume" : "ab-initio";
      return true;
    }

    function initialize(arg) {
      if (arg !== "" && arg !== undefined) return fail("201", "the argument must be empty") && "false";
      if (state === "running") return fail(is2004 ? "103" : "101", "already initialized") && "false";
      if (state === "done") return fail(is2004 ? "104" : "101", "already terminated") && "false";
      state = "running"; ok(); return "true";
    }
    function commit(arg) {
      if (arg !== "" && arg !== undefined) return fail("201", "the argument must be empty") && "false";
      if (state === "new") return fail(is2004 ? "142" : "301", "not initialized") && "false";
      if (state === "done") return fail(is2004 ? "143" : "101", "already terminated") && "false";
      if (!send(false)) return "false";
      ok(); return "true";
    }
    function terminate(arg) {
      if (arg !== "" && arg !== undefined) return fail("201", "the argument must be empty") && "false";
      if (state === "new") return fail(is2004 ? "112" : "301", "not initialized") && "false";
      if (state === "done") return fail(is2004 ? "113" : "101", "already terminated") && "false";
      if (!send(true)) return "false";
      state = "done"; ok(); return "true";
    }
    function errorString(code) {
      code = String(code);
      return (is2004 && MESSAGES_2004[code]) || MESSAGES[code] || "";
    }
    this.version = version;
    this.api = is2004 ? {
      Initialize: initialize, Terminate: terminate, Commit: commit,
      GetValue: getValue, SetValue: function (n, v) { return setValue(n, v); },
      GetLastError: function () { return lastError; },
      GetErrorString: errorString,
      GetDiagnostic: function (code) { return code ? errorString(code) + (diagnostic ? ": " + diagnostic : "") : diagnostic; },
      version: "1.0"
    } : {
      LMSInitialize: initialize, LMSFinish: terminate, LMSCommit: commit,
      LMSGetValue: getValue, LMSSetValue: function (n, v) { return setValue(n, v); },
      LMSGetLastError: function () { return lastError; },
      LMSGetErrorString: errorString,
      LMSGetDiagnostic: function (code) { return code ? errorString(code) + (diagnostic ? ": " + diagnostic : "") : diagnostic; }
    };
  }

  // Each launch of a content object gets fresh API objects (a finished SCO's are done).
  function fresh() {
    window.API = new Runtime("scorm12").api;
    window.API_1484_11 = new Runtime("scorm2004").api;
  }
  fresh();

  // -- the player: the content frame and, for several items, a list --------------------------
  document.addEventListener("DOMContentLoaded", function () {
    var frame = document.getElementById("sk-content");
    var links = document.querySelectorAll("#sk-items a");
    Array.prototype.forEach.call(links, function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        Array.prototype.forEach.call(links, function (l) { l.removeAttribute("aria-current"); });
        link.setAttribute("aria-current", "page");
        launch.item = link.getAttribute("data-item");
        launch.launch_data = link.getAttribute("data-launch-data") || "";
        fresh();
        frame.src = link.getAttribute("href");
      });
    });
  });
})();
